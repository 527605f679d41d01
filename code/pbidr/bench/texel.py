"""``pbidr bench texel``: the texel fit on several built-in samples, from zero and from the truth (oracle
drift), with each lever switched off (the ablation), scored at the coarse topology and at the dense mesh
with their ceilings and recovered fractions. Every run has the same step budget; the fits run on --device.

Writes OUT/texel.json and OUT/texel.md (tables; OUT/quality_time.png with --curve), and prints the fp32
matmul rate measured in the same run, so times compare across machines. Each fit runs in a worker
process (:mod:`pbidr.bench.texel_fit`)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pbidr.bench.common import check_conf, machine_info, matmul_rate, write_report
from pbidr.commands.args import nonneg_int_list, positive_int, positive_int_list, work_folder
from pbidr.utils.plot import line_chart

# Each lever of confs/fast.conf's texel fit switched off (FitConfig fields).
LEVERS = {
    "full": {},
    "SH2 light (not Lambert)": {"light_model": "poly", "light_order": 2},
    "albedo affine (not quadratic) in chroma": {"albedo_guide_order": 1},
    "no mark / dark weights": {"mark_tau": 0.0, "dark_level": 0.0},
    "no low-pass prior": {"lowpass_weight": 0.0},
    "Laplacian 0.3 (not the fine-scale prior)": {"laplacian_weight": 0.3, "finescale_weight": 0.0},
    "albedo eps 1e-4 (not 1e-6)": {"albedo_eps": 1e-4},
    "robust scale 0.005 (not 0.001)": {"robust_scale": 0.005},
    "coarse to fine (a level every 12 steps)": {"level_steps": 12},
    "lr not decayed": {"final_lr_fraction": 1.0},
}

# Parts of the energy replaced by the sample's truth (what each costs), from zero: (true light, true
# albedo, lever).
DIAGNOSTICS = {
    "diagnostic: true light": (True, False, {}),
    "diagnostic: true albedo and light": (True, True, {}),
    "diagnostic: true albedo and light, no low-pass prior": (True, True, {"lowpass_weight": 0.0}),
}


def _levers(text: str) -> dict[str, dict]:
    """--levers: all, none (the full setting only) or lever names joined by ';' (with the full setting)."""
    if text in ("all", "none"):
        return dict(LEVERS) if text == "all" else {"full": {}}
    names = [n.strip() for n in text.split(";")]
    bad = [n for n in names if n not in LEVERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown lever(s) {', '.join(map(repr, bad))}; known: {'; '.join(LEVERS)}")
    return {k: LEVERS[k] for k in ["full", *names]}


def _reference(spec: str) -> Path | tuple[str, list[tuple[float, float]]]:
    """--reference: a quality.json of `pbidr bench quality` (read after the fits, which give its
    ceilings), or LABEL=SECONDS:RECOVERED,... read here, so a bad one stops before any fit."""
    path = Path(spec)
    if path.is_file():
        return path
    label, sep, body = spec.partition("=")
    try:
        points = [(float(a), float(b)) for a, b in (item.split(":") for item in body.split(",") if item)]
    except ValueError:
        points = []
    if not sep or not points:
        raise argparse.ArgumentTypeError(f"{spec!r}: neither a file nor LABEL=SECONDS:RECOVERED,...")
    return label, points


def add_arguments(p: argparse.ArgumentParser) -> None:
    repo = Path(__file__).resolve().parents[3]
    p.add_argument("--output", "-o", "--out", dest="out", type=work_folder, required=True, metavar="DIR",
                   help="work folder (samples, texel.json, texel.md)")
    p.add_argument("--seeds", type=nonneg_int_list, default="0,1,2", help="built-in samples' seeds (default 0,1,2)")
    p.add_argument("--conf", default=str(repo / "confs" / "fast.conf"),
                   help="the conf whose texel fit is measured (default confs/fast.conf)")
    p.add_argument("--levers", type=_levers, default="all",
                   help="all, none (full + oracle only) or names joined by ';'")
    p.add_argument("--jobs", type=positive_int, default=1, help="fits in parallel (each gets cores / jobs threads)")
    p.add_argument("--curve", type=positive_int_list, default="", help="step counts, e.g. 25,50,100,150,300: also "
                   "fit the full setting with each (quality against time; use --jobs 1 so each fit has every core)")
    p.add_argument("--diagnostics", action="store_true",
                   help="also fit with the sample's true light and albedo in place of the fitted ones (what each costs)")
    p.add_argument("--reference", type=_reference, action="append", default=[],
                   help="another mode's quality against time for OUT/quality_time.png: a `pbidr bench quality` "
                   "quality.json (its runs on the same seeds), or LABEL=SECONDS:RECOVERED,... (measured elsewhere)")


def quality_time_chart(results: list[dict], references: list[tuple[str, list[tuple[float, float]]]]):
    """Recovered fraction (coarse topology and dense mesh) against fit seconds, the mean over seeds
    per step count, plus the reference modes' points: an RGB image."""
    by_steps: dict[int, list[dict]] = {}
    for r in results:
        if not r["oracle"] and (r["lever"] == "full" or r["lever"].endswith(" steps")):
            by_steps.setdefault(r["steps"], []).append(r)
    # a step count on every seed (--curve may repeat the shipped count: then both runs are averaged)
    n_seeds = len({r["seed"] for v in by_steps.values() for r in v})
    pts = sorted((float(np.mean([r["fit_s"] for r in v])), float(np.mean([r["coarse"]["recovered"] for r in v])),
                  float(np.mean([r["dense"]["recovered"] for r in v]))) for v in by_steps.values()
                 if len({r["seed"] for r in v}) == n_seeds)
    lines = {"texel fit, coarse": [(t, c) for t, c, _ in pts], "texel fit, dense": [(t, d) for t, _, d in pts]}
    lines.update(dict(references))
    return line_chart(lines, "seconds (log)  (y: recovered fraction, coarse topology unless named)",
                      refs=[(0.0, "coarse mesh"), (0.5, "target"), (1.0, "ceiling")], log_x=True)


def reference_points(reference: Path | tuple[str, list[tuple[float, float]]],
                     results: list[dict]) -> tuple[str, list[tuple[float, float]]]:
    """``--reference`` as :func:`_reference` read it: (label, [(seconds, recovered)]) as given, or from a
    quality.json of `pbidr bench quality` (ratio -> recovered with this run's coarse ceilings of the same
    seeds; seconds = step x s/it, the mean over seeds at the steps every run reached)."""
    if not isinstance(reference, Path):
        return reference
    path = reference
    report = json.loads(path.read_text())
    ceilings = {r["seed"]: r["coarse"]["ceiling"] for r in results if not r["oracle"]}
    per_step: dict[int, list[tuple[float, float]]] = {}
    runs = [e for e in report.get("runs", {}).values() if e.get("seed") in ceilings and e.get("s_per_iter")]
    for e in runs:
        for c in e.get("curve", []):
            rec = (1.0 - c["normal_error_ratio"]) / (1.0 - ceilings[e["seed"]])
            per_step.setdefault(int(c["step"]), []).append((c["step"] * e["s_per_iter"], rec))
    points = [(float(np.mean([t for t, _ in v])), float(np.mean([q for _, q in v])))
              for _, v in sorted(per_step.items()) if len(v) == len(runs)]
    return f"{path.parent.name} (ray/MLP)", points


def _fit_jobs(args: argparse.Namespace, out: Path, threads: int) -> list[dict]:
    """One job per (lever, seed), then the oracle, the diagnostics and the curve's step counts."""
    levers, seeds = args.levers, args.seeds

    def job(seed: int, name: str, lever: dict, oracle: bool = False) -> dict:
        return {"sample": str(out / f"sample{seed}"), "seed": seed, "conf": args.conf, "lever_name": name,
                "lever": lever, "oracle": oracle, "threads": threads, "device": str(args.device)}

    jobs = [job(seed, name, lever) for name, lever in levers.items() for seed in seeds]
    jobs += [job(seed, "oracle (start at the truth)", {}, oracle=True) for seed in seeds if "full" in levers]
    if args.diagnostics:
        jobs += [job(seed, name, lever) | {"true_light": tl, "true_albedo": ta}
                 for name, (tl, ta, lever) in DIAGNOSTICS.items() for seed in seeds]
    jobs += [job(seed, f"{n} steps", {"steps": n}) for n in args.curve for seed in seeds]
    return jobs


def _report_lines(report: dict) -> list[str]:
    """texel.md: the score table of every fit, then the fitted map's bands against the truth."""
    results, threads = report["results"], report["threads_per_job"]
    bands = [b["sigma_mm"] for b in results[0]["bands"]] if results else []  # the same bands in every fit
    device = report["machine"].get("device", "cpu")
    lines = [f"fp32 matmul {report['matmul_gflops_before']:.0f} / {report['matmul_gflops_after']:.0f} GFLOP/s "
             + (f"on {device} " if device != "cpu" else "") + f"(before / after), {report['jobs']} fits at a time, {threads} thread(s) each, wall {report['wall_s']:.0f} s",
             "",
             "| run | seed | fit s | coarse ratio / ceiling / recovered | dense ratio / ceiling / recovered | corr | RMS / true mm | leak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, d = r["coarse"], r["dense"]
        lines.append(f"| {r['lever']} | {r['seed']} | {r['fit_s']:.0f} | {c['ratio']:.3f} / {c['ceiling']:.3f} / "
                     f"**{c['recovered']:.2f}** | {d['ratio']:.3f} / {d['ceiling']:.3f} / **{d['recovered']:.2f}** | "
                     f"{c['correlation']:.2f} | {c['rms_mm']:.3f} / {c['true_rms_mm']:.3f} | {c['leak']:.2f} |")
    lines += ["", "Bands of the fitted map against the truth (Gaussian sigmas in mm; true / fitted RMS mm, slope, "
              "correlation), the full setting from zero and from the truth:", "",
              "| run | seed | " + " | ".join(f"{lo:g}-{hi:g}" for lo, hi in bands) + " |",
              "|---|---|" + "---|" * len(bands)]
    for r in results:
        if r["lever"] in ("full", "oracle (start at the truth)") or r["lever"].startswith("diagnostic"):
            lines.append(f"| {r['lever']} | {r['seed']} | " + " | ".join(
                f"{b['true_rms']:.3f} / {b['fit_rms']:.3f}, {b['slope']:.2f}, {b['correlation']:.2f}"
                for b in r["bands"]) + " |")
    return lines


def main(args: argparse.Namespace) -> int:
    from pbidr.bench.texel_fit import run_one
    from pbidr.preprocess.sample import make_sample
    from pbidr.utils.images import write_png

    check_conf(args.conf, [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        if not (out / f"sample{seed}" / "sample.json").is_file():
            make_sample(out / f"sample{seed}", seed=seed)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // args.jobs)
    jobs = _fit_jobs(args, out, threads)
    rate_before = matmul_rate(device=args.device) / 1e9
    t0 = time.perf_counter()
    # spawn, not fork: the parent's matmul probe has started OpenMP threads, and a forked child that uses
    # more than one thread hangs (measured: --jobs 1 on 2 cores never finished)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(run_one, jobs))
    wall = time.perf_counter() - t0
    rate_after = matmul_rate(device=args.device) / 1e9
    report = {"machine": machine_info(args.device), "matmul_gflops_before": rate_before,
              "matmul_gflops_after": rate_after, "wall_s": wall, "jobs": args.jobs, "threads_per_job": threads,
              "results": results}
    lines = _report_lines(report)
    write_report(out / "texel.json", report, out / "texel.md", "\n".join(lines) + "\n")
    if args.curve:
        write_png(out / "quality_time.png", quality_time_chart(results, [reference_points(r, results)
                                                                          for r in args.reference]))
    print("\n".join(lines))
    return 0
