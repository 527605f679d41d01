"""``pbidr bench``: measured numbers, printed and optionally written as JSON."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pbidr.evaluation.metrics import json_safe
from pbidr.evaluation.run_eval import evaluate
from pbidr.evaluation.score import score_mesh
from pbidr.flops import iteration_flops, matmul_rate
from pbidr.geometry.cameras import Rig, bounding_sphere, scale_matrix
from pbidr.io.load import load_mesh
from pbidr.preprocess.pipeline import preprocess
from pbidr.preprocess.render import make_renderer
from pbidr.preprocess.sample import make_sample
from pbidr.training.trainer import Trainer
from pbidr.utils.atomic import write_json


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def bench_render(workdir: Path, views: int = 17, res: int = 1024, repeat: int = 3, renderer: str = "embree") -> dict:
    """Render ``views`` views at ``res``² of the built-in sample: median seconds of ``repeat`` runs.

    ``render_s`` is ray casting + texture lookup only; ``preprocess_s`` is the whole
    ``pbidr preprocess`` (load, render, PNG encoding, contact sheet, atomic write)."""
    raw = workdir / "raw"
    if not (raw / "mesh.obj").exists():
        make_sample(raw)
    mesh = load_mesh(raw / "mesh.obj")
    center, radius = bounding_sphere(mesh.vertices)
    backend = make_renderer(renderer, mesh, scale_matrix(center, radius))
    rig = Rig(yaw=views, res=res)
    cams = rig.cameras()
    render_runs, pre_runs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for cam in cams:
            backend.render(cam)
        render_runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        preprocess(raw, workdir / "scan", rig, renderer=renderer, progress=False, overwrite=True)
        pre_runs.append(time.perf_counter() - t0)
    return {
        "renderer": renderer, "views": views, "res": res, "repeat": repeat,
        "faces": int(len(mesh.faces)),
        "render_s_median": statistics.median(render_runs), "render_s_runs": render_runs,
        "preprocess_s_median": statistics.median(pre_runs), "preprocess_s_runs": pre_runs,
        "target_s": 10.0,
    }


# ------------------------------------------------------------------------------------------------
# Training speed and FLOPs


def bench_train_speed(scan_dir: Path, conf_path: Path, mode: str, iters: int, warmup: int, workdir: Path,
                      overrides: dict | None = None) -> dict:
    """Seconds per iteration, rays/s and FLOPs of ``iters`` training iterations (after ``warmup``)."""
    run = workdir / f"speed_{conf_path.stem}_{mode}"
    shutil.rmtree(run, ignore_errors=True)
    ov = {"model.ray_tracer.mode": mode, **(overrides or {})}
    trainer = Trainer(scan_dir, run, conf_path, ov, device=torch.device("cpu"), progress=False)
    for _ in range(warmup):
        trainer.train_step()
    times, flops, evals, grad_evals, surface = [], [], [], [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
        c = trainer.last_counts
        f = iteration_flops(trainer.model, c["n_sdf_evals"], c["n_sdf_grad_evals"], c["n_surface"])
        flops.append(f.total)
        evals.append(c["n_sdf_evals"])
        grad_evals.append(c["n_sdf_grad_evals"])
        surface.append(c["n_surface"])
    shutil.rmtree(run, ignore_errors=True)
    s_it = statistics.median(times)
    batch = trainer.batch_size
    flop_it = statistics.mean(flops)
    return {"conf": conf_path.name, "mode": mode, "batch_size": batch, "iters_timed": iters,
            "image_size": list(trainer.data.hw), "s_per_iter": s_it, "rays_per_s": batch / s_it,
            "sdf_evals_per_ray": statistics.mean(evals) / batch, "sdf_grad_evals_per_iter": statistics.mean(grad_evals),
            "surface_rays_per_iter": statistics.mean(surface), "gflop_per_iter": flop_it / 1e9,
            "achieved_gflop_s": flop_it / s_it / 1e9}


# ------------------------------------------------------------------------------------------------
# The whole benchmark


FULL = {"grid": None, "texture": 1024, "views": 17, "res": 1024, "render_repeat": 3, "train_iters": None,
        "mc_res": 512, "eval_views": "1,5,9,13,17", "speed_iters": 5, "speed_warmup": 2, "test_conf_iters": 2}
QUICK = {"grid": (60, 80), "texture": 256, "views": 5, "res": 128, "render_repeat": 1, "train_iters": 10,
         "mc_res": 64, "eval_views": "3", "speed_iters": 1, "speed_warmup": 1, "test_conf_iters": 1,
         "test_conf_batch": 256}


def _modes(conf_path: Path) -> list[str]:
    """The ray tracers the speed section times: IDR's sphere tracing and the mesh-guided band search
    (``model.ray_tracer.mode``); both exist in every conf."""
    return ["idr", "mesh"]


@dataclass
class _EndToEnd:
    """The demo pipeline's run: its stage times, and what the later sections read."""

    seconds: dict
    raw: Path
    run: Path
    train_steps: int
    metrics: dict


def _bench_end_to_end(work: Path, size: dict, fast_conf: Path, progress: bool, log) -> _EndToEnd:
    """The demo pipeline, stage by stage (sample, preprocess, train with ``fast_conf``, eval), timed."""
    e2e = {}
    raw, scan, run = work / "raw", work / "scan", work / "run"
    log("e2e: sample")
    t0 = time.perf_counter()
    kw = {"texture_size": size["texture"]} | ({"grid": size["grid"]} if size["grid"] else {})
    make_sample(raw, overwrite=True, **kw)  # the benchmark's own work folder
    e2e["sample_s"] = time.perf_counter() - t0
    log("e2e: preprocess")
    t0 = time.perf_counter()
    preprocess(raw, scan, Rig(yaw=size["views"], res=size["res"]), progress=progress, overwrite=True)
    e2e["preprocess_s"] = time.perf_counter() - t0
    log("e2e: train (confs/fast_mlp.conf)")
    t0 = time.perf_counter()
    overrides = {"train.iters": size["train_iters"]} if size["train_iters"] else {}
    # overwrite: an earlier benchmark run is replaced; anything else in its place is refused
    trained = Trainer(scan, run, fast_conf, overrides, device=torch.device("cpu"), progress=progress,
                      overwrite=True).run()
    e2e["train_s"] = time.perf_counter() - t0
    e2e["train_iters"] = trained.step
    log("e2e: eval")
    t0 = time.perf_counter()
    metrics = evaluate(run, mc_resolution=size["mc_res"], views=size["eval_views"], device="cpu", progress=progress)
    e2e["eval_s"] = time.perf_counter() - t0
    e2e["total_s"] = sum(e2e[k] for k in ("sample_s", "preprocess_s", "train_s", "eval_s"))
    return _EndToEnd(seconds=e2e, raw=raw, run=run, train_steps=trained.step, metrics=metrics)


def _eval_section(metrics: dict, mc_resolution: int) -> dict:
    """Marching cubes' cost in the end-to-end eval, from its metrics.json."""
    mc = metrics.get("marching_cubes", {})
    return {"mc_resolution": mc_resolution, "mc_s": metrics["timings"].get("marching_cubes_s"),
            "mc_sdf_evals": mc.get("n_sdf_evals"), "mc_dense_evals": mc.get("dense_evals"),
            "mc_eval_saving": (mc["dense_evals"] / mc["n_sdf_evals"]) if mc.get("n_sdf_evals") else None,
            "eval_peak_rss_mb": metrics.get("peak_rss_mb"), "eval_total_s": metrics["timings"]["total_s"],
            "mc_error": mc.get("error")}


def _train_speed_section(scan: Path, work: Path, size: dict, fast_conf: Path, test_conf: Path, matmul_gflop_s: float,
                         log) -> list[dict]:
    """Both confs' training speed with each tracer, and the FLOP rate against the machine's matmul."""
    speed = []
    for conf_path, iters in ((fast_conf, size["speed_iters"]), (test_conf, size["test_conf_iters"])):
        # test.conf's network at the scan's size: the image resolution does not change the cost per ray.
        ov = {"dataset.img_res": []} if conf_path == test_conf else {}
        if conf_path == test_conf and "test_conf_batch" in size:
            ov["train.batch_size"] = size["test_conf_batch"]
        for mode in _modes(conf_path):
            log(f"train speed: {conf_path.name} {mode}")
            speed.append(bench_train_speed(scan, conf_path, mode, iters, size["speed_warmup"], work, ov))
    for row in speed:
        row["flop_rate_vs_matmul"] = row["achieved_gflop_s"] / matmul_gflop_s
    return speed


def _quality_section(e2e: _EndToEnd) -> dict:
    """The end-to-end run's meshes scored against the sample's truth."""
    quality = {"train_iters": e2e.train_steps, "psnr_mean": e2e.metrics.get("rendering", {}).get("psnr_mean")}
    for name in ("detailed.obj", "detailed_subdivided.obj"):
        sc = score_mesh(e2e.run / "eval" / name, e2e.raw)
        quality[name] = {k: sc[k] for k in ("normal_error_ratio", "displacement_correlation", "albedo_leak",
                                            "displacement_rms_mm", "normal_error_deg", "coarse_normal_error_deg")}
    return quality


def run_all(root: Path, out_json: Path, quick: bool = False, progress: bool = True) -> dict:
    """Every section, in one process: end-to-end demo pipeline, render, train speed, eval, quality."""
    size = QUICK if quick else FULL
    repo = Path(__file__).resolve().parents[2]
    fast_conf, test_conf = repo / "confs" / "fast_mlp.conf", repo / "confs" / "test.conf"
    work = out_json.parent / ("work_quick" if quick else "work")
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"quick": quick, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info()}
    results["machine"]["matmul_gflop_s"] = matmul_rate() / 1e9
    log = (lambda msg: print(f"[bench] {msg}", flush=True)) if progress else (lambda msg: None)

    e2e = _bench_end_to_end(work, size, fast_conf, progress, log)
    results["e2e"] = e2e.seconds
    log("render")
    results["render"] = bench_render(work, views=size["views"], res=size["res"], repeat=size["render_repeat"])
    results["eval"] = _eval_section(e2e.metrics, size["mc_res"])
    log("train speed")
    results["train_speed"] = _train_speed_section(work / "scan", work, size, fast_conf, test_conf,
                                                  results["machine"]["matmul_gflop_s"], log)
    log("quality")
    results["quality"] = _quality_section(e2e)
    write_json(out_json, json_safe(results))
    return results


def markdown(results: dict) -> str:
    """The results as the markdown tables of BENCHMARKS.md."""
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; fp32 matmul "
             f"{m['matmul_gflop_s']:.0f} GFLOP/s (measured in the same run). Date: {results['date']}"
             + (" (--quick sizes)" if results["quick"] else ""), ""]
    e = results["e2e"]
    lines += ["| stage | seconds |", "|---|---|"]
    for k in ("sample_s", "preprocess_s", "train_s", "eval_s", "total_s"):
        lines.append(f"| {k[:-2]} | {e[k]:.1f} |")
    r = results["render"]
    lines += ["", "| render | views | res | median s (render only) | median s (whole preprocess) | target |",
              "|---|---|---|---|---|---|",
              f"| {r['renderer']} | {r['views']} | {r['res']} | {r['render_s_median']:.2f} | "
              f"{r['preprocess_s_median']:.2f} | <= {r['target_s']:.0f} s |"]
    lines += ["", "| train conf | tracer | batch | s/it | rays/s | SDF evals/ray | GFLOP/it | GFLOP/s | % of matmul |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in results["train_speed"]:
        lines.append(f"| {t['conf']} | {t['mode']} | {t['batch_size']} | {t['s_per_iter']:.3f} | {t['rays_per_s']:.0f} | "
                     f"{t['sdf_evals_per_ray']:.1f} | {t['gflop_per_iter']:.1f} | {t['achieved_gflop_s']:.1f} | "
                     f"{100 * t['flop_rate_vs_matmul']:.1f} |")
    by = {(t["conf"], t["mode"]): t for t in results["train_speed"]}
    for conf in sorted({t["conf"] for t in results["train_speed"]}):
        if (conf, "idr") in by and (conf, "mesh") in by:
            lines.append(f"\n{conf}: mesh-guided / faithful rays/s = "
                         f"{by[(conf, 'mesh')]['rays_per_s'] / by[(conf, 'idr')]['rays_per_s']:.1f}x")
    ev = results["eval"]
    lines += ["", "| eval | MC res | MC s | SDF evals | dense evals | saving | eval peak RSS MB | eval s |",
              "|---|---|---|---|---|---|---|---|",
              f"| fast_mlp.conf run | {ev['mc_resolution']} | {_f(ev['mc_s'])} | {ev['mc_sdf_evals']} | "
              f"{ev['mc_dense_evals']} | {_f(ev['mc_eval_saving'], '.0f')}x | {_f(ev['eval_peak_rss_mb'], '.0f')} | "
              f"{_f(ev['eval_total_s'])} |"]
    q = results["quality"]
    lines += ["", f"Quality after {q['train_iters']} iterations of confs/fast_mlp.conf (masked PSNR "
              f"{_f(q['psnr_mean'], '.2f')} dB):", "",
              "| mesh | normal-error ratio (vs coarse) | mean / median normal error deg | displacement corr. | "
              "RMS mm | albedo leak |", "|---|---|---|---|---|---|"]
    for name in ("detailed.obj", "detailed_subdivided.obj"):
        s = q[name]
        lines.append(f"| {name} | {_f(s['normal_error_ratio'], '.3f')} | {_f(s['normal_error_deg']['mean'], '.2f')} / "
                     f"{_f(s['normal_error_deg']['median'], '.2f')} (coarse {_f(s['coarse_normal_error_deg']['mean'], '.2f')}) | "
                     f"{_f(s['displacement_correlation'], '.3f')} | {_f(s['displacement_rms_mm'], '.3f')} | "
                     f"{_f(s['albedo_leak'], '.2f')} |")
    return "\n".join(lines) + "\n"


def _f(x, fmt: str = ".1f") -> str:
    try:
        return format(float(x), fmt)
    except (TypeError, ValueError):
        return str(x)


def run_bench(args: argparse.Namespace) -> int:
    if args.what == "all":
        out = Path(args.json or "bench/results.json")
        results = run_all(out.parent, out, quick=args.quick, progress=not args.quiet)
        print(markdown(results))
        print(f"results: {out}")
        return 0
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="pbidr-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        result = bench_render(workdir, views=args.views, res=args.res, repeat=args.repeat, renderer=args.renderer)
    print(f"machine: {info['cpu']} ({info['cores']} cores), torch {info['torch']}")
    print(f"render  {result['views']} views at {result['res']}^2 ({result['renderer']}, {result['faces']} faces): "
          f"median {result['render_s_median']:.2f} s render only, {result['preprocess_s_median']:.2f} s whole "
          f"preprocess (target <= {result['target_s']:.0f} s), runs {[round(r, 2) for r in result['render_s_runs']]}")
    if args.json:
        write_json(args.json, {"machine": info, "render": result})
    return 0
