"""``pbidr bench matrix``: the texel fit over a family of faces, not one.

Every condition (a ``pbidr sample`` preset: light direction, glossy lobe, fill, marks by kind, detail by
kind, texture size, coarse misfit, a path-traced texture) is made for every seed; the fit runs from zero
and from the truth (oracle drift) with the conf's energy (``confs/fast.conf`` unless ``--conf``, with
``--set`` on top, as ``pbidr train`` reads it); each result is scored at the coarse topology and at the
dense mesh (subdivided to about a texel) against the truth with its ceiling. Reported per condition:
recovered fraction (coarse and dense), correlation, RMS against the truth, leak per mark kind, oracle
drift; then the worst and the median over the matrix, and the targets of issue 24 met or not.

Writes ``OUT/matrix.json``, ``OUT/matrix.md`` and ``OUT/matrix.png`` (a contact sheet: for every
condition its texture and the relief of the truth, of the fit and of the fit from the truth, shaded alike
under one raking light), with the
fp32 matmul rate measured in the same run. Samples are kept in ``OUT/samples`` and reused when their
conditions match; each finished condition is kept in ``OUT/done`` and reused when the energy, the
resolution, the oracle and the sample are the same, so that an interrupted matrix resumes (its timings
are then those of the earlier run).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

MATRIX = ("classic", "frontal", "grazing", "below", "glossy", "glossy-sharp", "soft-fill", "grey-marks", "hair",
          "red-marks", "pores", "wrinkles", "folds", "misfit", "texture-512", "texture-2048", "new-user",
          "frontal-glossy-grey", "everything", "cycles", "cycles-misfit")
QUICK = ("classic", "grazing", "frontal-glossy-grey", "new-user")


# ----------------------------------------------------------------------------- one condition

def sample_folder(out: Path, preset: str, seed: int) -> Path:
    """The sample of ``preset`` and ``seed`` under ``out/samples``, made unless one with the same
    conditions is there."""
    from pbidr.preprocess.conditions import conditions_for
    from pbidr.preprocess.sample import make_sample

    folder = out / "samples" / f"{preset}-s{seed}"
    cond = conditions_for(preset)
    info = folder / "sample.json"
    if info.is_file():
        old = json.loads(info.read_text())
        if old.get("conditions") == json.loads(json.dumps(cond.to_dict())) and old.get("seed") == seed:
            return folder
    make_sample(folder, seed=seed, conditions=cond, preset=preset, overwrite=True)
    return folder


def relief(chart, d_map: np.ndarray, azimuth_deg: float = 45.0, elevation_deg: float = 25.0) -> np.ndarray:
    """The relief of ``d_map`` alone, shaded by a raking light in each texel's own tangent frame (the coarse
    shape taken out: flat is mid-grey), in the UV layout (H, W) in [0, 1]: what the contact sheet shows.
    The light comes from ``azimuth_deg`` (0: +x, the face's left-to-right) at ``elevation_deg``."""
    h, w = d_map.shape
    du, dv = np.zeros((h, w)), np.zeros((h, w))
    du[:, 1:-1] = (d_map[:, 2:] - d_map[:, :-2]) * (w / 2.0)
    dv[1:-1, :] = -(d_map[2:, :] - d_map[:-2, :]) * (h / 2.0)  # rows run along -v
    grad = (du * chart.interior)[..., None] * chart.grad_u + (dv * chart.interior)[..., None] * chart.grad_v
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    along = np.array([np.cos(az), np.sin(az), 0.0])
    tangent = along - (chart.normals @ along)[..., None] * chart.normals
    tangent /= np.maximum(np.linalg.norm(tangent, axis=-1, keepdims=True), 1e-9)
    lit = (np.sin(el) - np.cos(el) * (grad * tangent).sum(-1)) / np.sqrt(1.0 + (grad**2).sum(-1))
    return np.where(chart.mask, np.clip(0.5 * lit / np.sin(el), 0.0, 1.0), 0.0)


def run_condition(job: dict) -> dict:
    """Make (or reuse) the sample of one (preset, seed), fit from zero and from the truth, score both."""
    import torch

    torch.set_num_threads(job["threads"])
    from pbidr.bench.texel_fit import at_resolution, ceilings, score_map
    from pbidr.detail.chart import build_chart, texture_colours
    from pbidr.detail.fit import fit_detail, seam_pairs
    from pbidr.evaluation.displacement import subdivide_to_spacing
    from pbidr.evaluation.run_eval import map_texel_spacing
    from pbidr.evaluation.score import sample_reference
    from pbidr.io.load import load_mesh
    from pbidr.utils.atomic import atomic_path, write_json

    cached = _cached(job)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    folder = sample_folder(Path(job["out"]), job["preset"], job["seed"])
    sample_s = time.perf_counter() - t0
    cfg, res = job["fit"], job["resolution"]
    mesh = load_mesh(folder / "mesh.obj")
    chart = build_chart(mesh, (res, res))
    colours = texture_colours(mesh, chart.size)
    seams = seam_pairs(chart, mesh)
    truth, coarse_errors = sample_reference(folder)
    dense, dense_n, _ = subdivide_to_spacing(mesh, map_texel_spacing(mesh, res))
    ceiling = ceilings(mesh, dense, truth, coarse_errors["mean"])
    gt = at_resolution(np.load(folder / "gt_displacement_uv.npy").astype(np.float64), res)
    result = {"preset": job["preset"], "seed": job["seed"], "sample_s": sample_s, "ceiling": ceiling}
    images = {"texture": colours, "truth": relief(chart, gt)}
    for run, init in (("fit", None), ("oracle", gt)):
        if run == "oracle" and not job["oracle"]:
            continue
        t = time.perf_counter()
        fit = fit_detail(chart, colours, cfg, device=job["device"], init_displacement=init, seams=seams)
        result[run] = {"fit_s": time.perf_counter() - t, "light": fit.light.describe(),
                       **score_map(mesh, dense, dense_n, fit.displacement, truth, coarse_errors["mean"], ceiling)}
        images[run] = relief(chart, fit.displacement)
    maps_file, done = _job_files(job)
    with atomic_path(maps_file) as tmp:
        np.savez_compressed(tmp, **{k: v.astype(np.float16) for k, v in images.items()})
    write_json(done, {"key": _job_key(job), "result": result})  # last: done means both are whole
    return result


def _job_files(job: dict) -> tuple[Path, Path]:
    """Where a condition's relief maps (the contact sheet's) and its finished result are kept; ``job`` has
    out, preset and seed (a job, or a result with out)."""
    name = f"{job['preset']}-s{job['seed']}"
    return Path(job["out"]) / "maps" / f"{name}.npz", Path(job["out"]) / "done" / f"{name}.json"


def _job_key(job: dict) -> str:
    """What a condition's result depends on: the energy, the resolution, the oracle, the sample's
    conditions and seed (the device and the threads change timings only)."""
    from dataclasses import asdict

    from pbidr.preprocess.conditions import conditions_for

    return json.dumps({"fit": asdict(job["fit"]), "resolution": job["resolution"], "oracle": job["oracle"],
                       "conditions": conditions_for(job["preset"]).to_dict(), "seed": job["seed"]},
                      sort_keys=True, default=str)


def _cached(job: dict) -> dict | None:
    """The result of an earlier run of the same job in this work folder (``done/``), so that an interrupted
    matrix resumes where it stopped; None when there is none or it was made with anything different."""
    maps, done = _job_files(job)
    if not (done.is_file() and maps.is_file()):
        return None
    try:
        old = json.loads(done.read_text())
    except (OSError, ValueError):
        return None
    if old.get("key") != _job_key(job):
        return None
    return dict(old["result"], cached=True)


# ----------------------------------------------------------------------------- the matrix

def summarise(results: list[dict]) -> dict:
    """Worst and median over the matrix and the targets (issue 24) met or not."""
    fits = [r["fit"] for r in results]
    rec_c = [f["coarse"]["recovered"] for f in fits]
    rec_d = [f["dense"]["recovered"] for f in fits]
    corr = [f["coarse"]["correlation"] for f in fits]
    leaks = {}
    for f in fits:
        for k, v in {"all": f["coarse"]["leak"], **f["coarse"]["leak_by_kind"]}.items():
            if not math.isnan(v):
                leaks.setdefault(k, []).append(v)
    ratios = [f["coarse"]["ratio"] for f in fits]
    drift = [(r["oracle"]["coarse"]["ratio"], r["ceiling"]["coarse"] + 0.1) for r in results if "oracle" in r]
    summary = {"n": len(results), "recovered_coarse": {"worst": min(rec_c), "median": float(np.median(rec_c))},
               "recovered_dense": {"worst": min(rec_d), "median": float(np.median(rec_d))},
               "dense_minus_coarse_worst": float(min(d - c for c, d in zip(rec_c, rec_d))),
               "correlation_median": float(np.median(corr)),
               "leak_max": {k: max(v) for k, v in leaks.items()},
               "ratio_max": max(ratios),
               "oracle_drift_misses": sum(o > lim for o, lim in drift) if drift else None}  # None: not measured
    summary["targets"] = {
        "worst recovered >= 0.4": summary["recovered_coarse"]["worst"] >= 0.4,
        "median recovered >= 0.6": summary["recovered_coarse"]["median"] >= 0.6,
        "dense within 0.05 of coarse": summary["dense_minus_coarse_worst"] >= -0.05,
        "median correlation >= 0.7": summary["correlation_median"] >= 0.7,
        "leak <= 1.2 per kind": all(v <= 1.2 for v in summary["leak_max"].values()),
        "ratio < 1 everywhere": summary["ratio_max"] < 1.0,
        "oracle within ceiling + 0.1": (summary["oracle_drift_misses"] == 0) if drift else None,
    }
    return summary


def report_lines(report: dict) -> list[str]:
    s = report["summary"]
    lines = [f"fp32 matmul {report['matmul_gflops'][0]:.0f} / {report['matmul_gflops'][1]:.0f} GFLOP/s (before / after), "
             f"{report['jobs']} conditions at a time, {report['threads']} thread(s) each, wall {report['wall_s']:.0f} s, "
             f"device {report['device']}"
             + (f"; {report['reused']} condition(s) reused from an earlier run" if report.get("reused") else ""), "",
             "| condition | seed | recovered coarse / dense | ratio / ceiling | corr | RMS / true / error mm | leak (all; by kind) | oracle ratio (limit) | fit s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        f, c = r["fit"], r["fit"]["coarse"]
        leak = ", ".join(f"{k} {v:.2f}" for k, v in c["leak_by_kind"].items())
        oracle = (f"{r['oracle']['coarse']['ratio']:.3f} ({r['ceiling']['coarse'] + 0.1:.3f})" if "oracle" in r else "-")
        lines.append(f"| {r['preset']} | {r['seed']} | **{c['recovered']:.2f}** / {f['dense']['recovered']:.2f} | "
                     f"{c['ratio']:.3f} / {c['ceiling']:.3f} | {c['correlation']:.2f} | {c['rms_mm']:.3f} / "
                     f"{c['true_rms_mm']:.3f} / {c['error_rms_mm']:.3f} | {c['leak']:.2f}; {leak} | {oracle} | "
                     f"{f['fit_s']:.0f} |")
    lines += ["", f"Worst / median recovered, coarse: **{s['recovered_coarse']['worst']:.2f} / "
              f"{s['recovered_coarse']['median']:.2f}**; dense: {s['recovered_dense']['worst']:.2f} / "
              f"{s['recovered_dense']['median']:.2f}; median correlation {s['correlation_median']:.2f}; largest ratio "
              f"{s['ratio_max']:.3f}; largest leak " + ", ".join(f"{k} {v:.2f}" for k, v in s["leak_max"].items())
              + "; oracle drift misses " + ("not measured (--no-oracle)" if s["oracle_drift_misses"] is None
                                            else f"{s['oracle_drift_misses']} of {s['n']}"), ""]
    lines += [f"- {name}: {'not measured' if ok is None else 'met' if ok else 'missed'}" for name, ok in s["targets"].items()]
    return lines


def contact_sheet(out: Path, results: list[dict]) -> np.ndarray:
    """Rows of conditions (first seed of each): texture, truth, fit, oracle fit, each shaded alike."""
    from pbidr.utils.images import label

    rows, seen = [], set()
    for r in results:
        if r["preset"] in seen:
            continue
        seen.add(r["preset"])
        maps = np.load(_job_files(dict(r, out=out))[0])
        tiles = [np.asarray(maps["texture"], np.float32)]
        for key in ("truth", "fit", "oracle"):
            if key in maps:
                tiles.append(np.repeat(np.asarray(maps[key], np.float32)[..., None], 3, -1))
        tiles = [_tile(t) for t in tiles]
        rec = r["fit"]["coarse"]["recovered"]
        tiles[0] = label(tiles[0], f"{r['preset']} (s{r['seed']}): {rec:.2f}")
        rows.append(np.concatenate(tiles, axis=1))
    width = max(x.shape[1] for x in rows)
    rows = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in rows]
    return np.concatenate(rows, axis=0)


def _tile(img: np.ndarray, size: int = 256) -> np.ndarray:
    import cv2

    img = np.clip(img, 0.0, 1.0)
    return (cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) * 255).astype(np.uint8)


def _presets(text: str) -> tuple[str, ...]:
    """--presets: sample presets joined by ',' (every one known), 'quick' or 'all' (the matrix)."""
    from pbidr.preprocess.conditions import PRESETS

    if text in ("quick", "all"):
        return QUICK if text == "quick" else MATRIX
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in PRESETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown preset(s) {', '.join(map(repr, bad)) or '(none)'}; known: "
                                         f"{', '.join(PRESETS)}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pbidr.commands.args import nonneg_int_list, positive_int, work_folder

    repo = Path(__file__).resolve().parents[3]
    p.add_argument("--output", "-o", "--out", dest="out", type=work_folder, required=True, metavar="DIR",
                   help="work folder (samples/, maps/, matrix.json, matrix.md, matrix.png)")
    p.add_argument("--presets", type=_presets, default="all", help="the conditions: sample presets joined by ',', "
                   "'all' (the matrix: " + ", ".join(MATRIX) + ") or 'quick' (" + ", ".join(QUICK) + ")")
    p.add_argument("--seeds", type=nonneg_int_list, default="0,1", help="seeds of every condition (default 0,1)")
    p.add_argument("--conf", default=str(repo / "confs" / "fast.conf"),
                   help="the conf whose texel fit is measured (default confs/fast.conf)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a conf key over --conf, as pbidr train --set (repeatable): the ablations")
    p.add_argument("--jobs", type=positive_int, default=2, help="conditions in parallel (each gets cores / jobs "
                   "threads; default 2)")
    p.add_argument("--no-oracle", action="store_true", help="skip the fits from the truth (oracle drift)")


def _jobs(args: argparse.Namespace, out: Path) -> list[dict]:
    from pbidr.bench.common import check_conf
    from pbidr.detail.solver import fit_config

    conf = check_conf(args.conf, args.set)
    fit = replace(fit_config(conf.loss.texel, conf.model.displacement_map, conf.train.learning_rate,
                             conf.train.iters), log_every=10**9)
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    return [{"out": str(out), "preset": p, "seed": int(s), "fit": fit, "resolution": conf.model.displacement_map.resolution,
             "oracle": not args.no_oracle, "threads": threads, "device": str(args.device)}
            for p in args.presets for s in args.seeds]


def main(args: argparse.Namespace) -> int:
    from pbidr.bench.common import machine_info, matmul_rate, write_report
    from pbidr.utils.images import write_png

    out = Path(args.out)
    jobs = _jobs(args, out)  # the conf and --set checked before any work
    (out / "maps").mkdir(parents=True, exist_ok=True)
    rate = matmul_rate(device=args.device) / 1e9
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # forked children that use OpenMP threads hang (bench texel)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        results = list(pool.map(run_condition, jobs))
    report = {"machine": machine_info(args.device), "matmul_gflops": [rate, matmul_rate(device=args.device) / 1e9],
              "wall_s": time.perf_counter() - t0, "jobs": args.jobs,
              "reused": sum(bool(r.get("cached")) for r in results),
              "threads": jobs[0]["threads"], "device": jobs[0]["device"], "conf": args.conf, "set": args.set,
              "results": results, "summary": summarise(results)}
    lines = report_lines(report)
    write_report(out / "matrix.json", report, out / "matrix.md", "\n".join(lines) + "\n")
    write_png(out / "matrix.png", contact_sheet(out, results))
    print("\n".join(lines))
    return 0


