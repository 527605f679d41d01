"""``python -m pbidr.bench_texel``: the texel fit on several built-in samples, from zero and from the
truth (oracle drift), with each lever switched off (the ablation), scored at the coarse topology and
at the dense mesh with their ceilings and recovered fractions. Every run has the same step budget.

Writes ``OUT/texel.json`` and ``OUT/texel.md`` (tables), and prints the fp32 matmul rate measured in the
same run, so times compare across machines.
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

from pbidr.preprocess.sample import make_sample
from pbidr.utils.images import write_png

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


def matmul_gflops(n: int = 1024, repeat: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t) / 1e9


def run_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    from pbidr.bench_texel import _fit_and_score

    return _fit_and_score(job)


def _fit_and_score(job: dict) -> dict:
    from pbidr.detail.chart import build_chart, texture_colours
    from pbidr.detail.fit import fit_detail, seam_pairs
    from pbidr.detail.solver import fit_config
    from pbidr.evaluation.displacement import subdivide_to_spacing
    from pbidr.evaluation.run_eval import map_texel_spacing
    from pbidr.evaluation.score import albedo_leak, ceiling_vertices, recovered_fraction, sample_reference, score_vertices
    from pbidr.evaluation.uv_maps import sample_uv_map
    from pbidr.io.load import load_mesh
    from pbidr.training.conf import load_conf

    folder = Path(job["sample"])
    conf = load_conf(job["conf"])
    fit = fit_config(conf.loss.texel, conf.model.displacement_map, conf.train.learning_rate, conf.train.iters)
    cfg = replace(fit, log_every=10**9, **job["lever"])
    res = conf.model.displacement_map.resolution
    mesh = load_mesh(folder / "mesh.obj")
    chart = build_chart(mesh, (res, res))
    gt = np.load(folder / "gt_displacement_uv.npy")  # the true map, at the texture's size
    init = at_resolution(gt, res) if job["oracle"] else None
    light = albedo = None
    if job.get("true_light"):
        from pbidr.detail.fit import Light
        from pbidr.preprocess import sample as face_sample

        direction = np.asarray(json.loads((folder / "sample.json").read_text())["light_direction"])
        light = Light("lambert", 1, np.array([face_sample.AMBIENT, *(face_sample.DIFFUSE * direction)]))
    if job.get("true_albedo"):
        from PIL import Image

        albedo = np.asarray(Image.open(folder / "albedo.png").convert("RGB")).astype(np.float64) / 255.0
        albedo = at_resolution(albedo, res)
    t0 = time.perf_counter()
    fit = fit_detail(chart, texture_colours(mesh, chart.size), cfg, init_displacement=init,
                     seams=seam_pairs(chart, mesh), light=light, albedo=albedo)
    seconds = time.perf_counter() - t0
    truth, coarse_errors = sample_reference(folder)
    coarse_ref = coarse_errors["mean"]
    out = {"seed": job["seed"], "lever": job["lever_name"], "oracle": job["oracle"], "fit_s": seconds,
           "steps": cfg.steps, "resolution": res}
    vn = mesh.vertex_normals()
    dense, dense_n, levels = subdivide_to_spacing(mesh, map_texel_spacing(mesh, res))
    for name, m, normals in (("coarse", mesh, vn), ("dense", dense, dense_n)):
        vuv = np.zeros((len(m.vertices), 2))
        vuv[m.faces.reshape(-1)] = m.uv[m.face_uv.reshape(-1)]
        d = sample_uv_map(fit.displacement, vuv)
        verts = m.vertices + d[:, None] * normals
        s = score_vertices(verts, m.faces, truth)
        best = score_vertices(ceiling_vertices(m.vertices, truth), m.faces, truth)
        ratio = float(s.normal_error_deg.mean() / coarse_ref)
        ceiling = float(best.normal_error_deg.mean() / coarse_ref)
        out[name] = {"ratio": ratio, "ceiling": ceiling, "recovered": recovered_fraction(ratio, ceiling),
                     "correlation": float(np.corrcoef(s.displacement, s.true_displacement)[0, 1]),
                     "rms_mm": float(np.sqrt(np.mean(s.displacement**2))),
                     "true_rms_mm": float(np.sqrt(np.mean(s.true_displacement**2))),
                     "leak": float(albedo_leak(s, truth)[0]), "vertices": int(len(m.vertices))}
    out["dense"]["subdivisions"] = levels
    out["bands"] = displacement_bands(fit.displacement, gt, folder)
    return out


BAND_EDGES_MM = (0.0, 0.6, 1.5, 4.0, 12.0, math.inf)  # Gaussian sigmas (mm) between the bands


def at_resolution(image: np.ndarray, res: int) -> np.ndarray:
    """A texture-layout array (H, W[, C]) area-averaged onto the res x res chart grid (the true map and
    albedo, from the texture's size); unchanged when it is that size already."""
    import cv2

    if image.shape[:2] == (res, res):
        return image
    return cv2.resize(image, (res, res), interpolation=cv2.INTER_AREA)


def displacement_bands(d: np.ndarray, truth: np.ndarray, folder: Path) -> list[dict]:
    """The fitted map D (res, res) against the sample's true one ``truth`` (its gt_displacement_uv),
    band by band (differences of Gaussian blurs at BAND_EDGES_MM, in the sample's face-plane
    millimetres), inside its scoring region: the RMS of each, the regression slope of fit on truth
    (1 = full amplitude) and the correlation. Shows which scales the fit recovers and which it cannot
    see."""
    import cv2
    from PIL import Image

    from pbidr.preprocess import sample as face_sample

    h, w = d.shape
    gt = at_resolution(truth.astype(np.float64), h)
    region = np.asarray(Image.open(folder / "face_region_uv.png").convert("L").resize((w, h))) > 127
    sx, sy = w / face_sample.FACE_WIDTH_MM, h / face_sample.FACE_HEIGHT_MM  # texels per mm

    def blur(x: np.ndarray, sigma_mm: float) -> np.ndarray:
        if sigma_mm == 0.0:
            return x
        if math.isinf(sigma_mm):
            return np.zeros_like(x)
        return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma_mm * sx, sigmaY=sigma_mm * sy)

    out = []
    fit = d.astype(np.float64)
    for lo, hi in zip(BAND_EDGES_MM[:-1], BAND_EDGES_MM[1:]):
        t = (blur(gt, lo) - blur(gt, hi))[region]
        f = (blur(fit, lo) - blur(fit, hi))[region]
        out.append({"sigma_mm": [lo, hi], "true_rms": float(t.std()), "fit_rms": float(f.std()),
                    "slope": float((t * f).sum() / max((t * t).sum(), 1e-30)),
                    "correlation": float(np.corrcoef(t, f)[0, 1])})
    return out


def quality_time_chart(results: list[dict], references: list[tuple[str, list[tuple[float, float]]]]):
    """Recovered fraction (coarse topology and dense mesh) against fit seconds, the mean over seeds
    per step count, plus the reference modes' points: an RGB image."""
    from pbidr.utils.plot import line_chart

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


def reference_points(spec: str, results: list[dict]) -> tuple[str, list[tuple[float, float]]]:
    """``--reference``: (label, [(seconds, recovered)]) from a quality.json of `pbidr bench quality`
    (ratio -> recovered with this run's coarse ceilings of the same seeds; seconds = step x s/it, the mean
    over seeds at the steps every run reached) or from LABEL=SECONDS:RECOVERED,..."""
    path = Path(spec)
    if not path.is_file():
        label, sep, body = spec.partition("=")
        try:
            points = [(float(a), float(b)) for a, b in (item.split(":") for item in body.split(",") if item)]
        except ValueError:
            points = []
        if not sep or not points:
            raise SystemExit(f"--reference {spec!r}: neither a file nor LABEL=SECONDS:RECOVERED,...")
        return label, points
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


def _parse_args(argv) -> argparse.Namespace:
    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(prog="python -m pbidr.bench_texel", description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--conf", default=str(repo / "confs" / "fast.conf"))
    p.add_argument("--levers", default="all", help="all, none (full + oracle only) or names joined by ';'")
    p.add_argument("--jobs", type=int, default=1, help="fits in parallel (each gets cores / jobs threads)")
    p.add_argument("--curve", default="", help="step counts, e.g. 25,50,100,150,300: also fit the full setting "
                   "with each (quality against time; use --jobs 1 so each fit has every core)")
    p.add_argument("--diagnostics", action="store_true",
                   help="also fit with the sample's true light and albedo in place of the fitted ones (what each costs)")
    p.add_argument("--reference", action="append", default=[],
                   help="another mode's quality against time for OUT/quality_time.png: a `pbidr bench quality` "
                   "quality.json (its runs on the same seeds), or LABEL=SECONDS:RECOVERED,... (measured elsewhere)")
    return p.parse_args(argv)


def _fit_jobs(args: argparse.Namespace, out: Path, seeds: list[int], threads: int) -> list[dict]:
    """One job per (lever, seed), then the oracle, the diagnostics and the curve's step counts."""
    levers = LEVERS if args.levers == "all" else ({"full": {}} if args.levers == "none" else
                                                  {k: LEVERS[k] for k in ["full", *args.levers.split(";")]})

    def job(seed: int, name: str, lever: dict, oracle: bool = False) -> dict:
        return {"sample": str(out / f"sample{seed}"), "seed": seed, "conf": args.conf, "lever_name": name,
                "lever": lever, "oracle": oracle, "threads": threads}

    jobs = [job(seed, name, lever) for name, lever in levers.items() for seed in seeds]
    jobs += [job(seed, "oracle (start at the truth)", {}, oracle=True) for seed in seeds if "full" in levers]
    if args.diagnostics:
        jobs += [job(seed, name, lever) | {"true_light": tl, "true_albedo": ta}
                 for name, (tl, ta, lever) in DIAGNOSTICS.items() for seed in seeds]
    jobs += [job(seed, f"{n} steps", {"steps": n}) for n in (int(x) for x in args.curve.split(",") if x)
             for seed in seeds]
    return jobs


def _report_lines(report: dict) -> list[str]:
    """texel.md: the score table of every fit, then the fitted map's bands against the truth."""
    results, threads = report["results"], report["threads_per_job"]
    lines = [f"fp32 matmul {report['matmul_gflops_before']:.0f} / {report['matmul_gflops_after']:.0f} GFLOP/s "
             f"(before / after), {report['jobs']} fits at a time, {threads} thread(s) each, wall {report['wall_s']:.0f} s",
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
              "| run | seed | " + " | ".join(f"{lo:g}-{hi:g}" for lo, hi in zip(BAND_EDGES_MM[:-1], BAND_EDGES_MM[1:]))
              + " |", "|---|---|" + "---|" * (len(BAND_EDGES_MM) - 1)]
    for r in results:
        if r["lever"] in ("full", "oracle (start at the truth)") or r["lever"].startswith("diagnostic"):
            lines.append(f"| {r['lever']} | {r['seed']} | " + " | ".join(
                f"{b['true_rms']:.3f} / {b['fit_rms']:.3f}, {b['slope']:.2f}, {b['correlation']:.2f}"
                for b in r["bands"]) + " |")
    return lines


def main(argv=None) -> int:
    args = _parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for seed in seeds:
        if not (out / f"sample{seed}" / "sample.json").is_file():
            make_sample(out / f"sample{seed}", seed=seed)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // max(1, args.jobs))
    jobs = _fit_jobs(args, out, seeds, threads)
    rate_before = matmul_gflops()
    t0 = time.perf_counter()
    # spawn, not fork: the parent's matmul probe has started OpenMP threads, and a forked child that uses
    # more than one thread hangs (measured: --jobs 1 on 2 cores never finished)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(run_one, jobs))
    wall = time.perf_counter() - t0
    rate_after = matmul_gflops()
    report = {"matmul_gflops_before": rate_before, "matmul_gflops_after": rate_after, "wall_s": wall,
              "jobs": args.jobs, "threads_per_job": threads, "results": results}
    (out / "texel.json").write_text(json.dumps(report, indent=1))
    lines = _report_lines(report)
    (out / "texel.md").write_text("\n".join(lines) + "\n")
    if args.curve:
        write_png(out / "quality_time.png", quality_time_chart(results, [reference_points(r, results)
                                                                          for r in args.reference]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
