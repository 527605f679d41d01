"""The timed sections of ``pbidr bench all`` on the built-in sample: end to end (the demo pipeline),
render (also ``pbidr bench render``), training speed with its FLOPs, marching cubes and quality.

Each section returns its JSON entry; :mod:`pbidr.bench.suite` runs them in order and writes the report.
The stages are imported at the top: the verbs import this module only when they run."""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pbidr.bench.flops import iteration_flops
from pbidr.evaluation.run_eval import evaluate
from pbidr.evaluation.score import score_mesh
from pbidr.geometry.cameras import Rig, bounding_sphere, scale_matrix
from pbidr.io.load import load_mesh
from pbidr.preprocess.pipeline import preprocess
from pbidr.preprocess.render import make_renderer
from pbidr.preprocess.sample import make_sample
from pbidr.training.trainer import Trainer


def bench_render(workdir: Path, views: int = 17, res: int = 1024, repeat: int = 3, renderer: str = "embree",
                 device: torch.device | str = "cpu") -> dict:
    """Render ``views`` views at ``res``² of the built-in sample: median seconds of ``repeat`` runs.

    ``render_s`` is ray casting + texture lookup only; ``preprocess_s`` is the whole
    ``pbidr preprocess`` (load, render, PNG encoding, contact sheet, atomic write). ``device`` is the
    pytorch3d renderer's (Embree runs on the CPU)."""
    raw = workdir / "raw"
    if not (raw / "mesh.obj").exists():
        make_sample(raw)
    mesh = load_mesh(raw / "mesh.obj")
    center, radius = bounding_sphere(mesh.vertices)
    backend = make_renderer(renderer, mesh, scale_matrix(center, radius), device=str(device))
    rig = Rig(yaw=views, res=res)
    cams = rig.cameras()
    render_runs, pre_runs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for cam in cams:
            backend.render(cam)
        render_runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        preprocess(raw, workdir / "scan", rig, renderer=renderer, progress=False, overwrite=True,
                   device=str(device))
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
                      overrides: dict | None = None, device: torch.device = torch.device("cpu")) -> dict:
    """Seconds per iteration, rays/s and FLOPs of ``iters`` training iterations (after ``warmup``)."""
    run = workdir / f"speed_{conf_path.stem}_{mode}"
    shutil.rmtree(run, ignore_errors=True)
    ov = {"model.ray_tracer.mode": mode, **(overrides or {})}
    trainer = Trainer(scan_dir, run, conf_path, ov, device=device, progress=False)
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
# The sections of `pbidr bench all`; ``size`` is one of pbidr.bench.suite's FULL / QUICK.


# The ray tracers the speed section times: IDR's sphere tracing and the mesh-guided band search
# (model.ray_tracer.mode); both exist in every conf.
TRACERS = ("idr", "mesh")


@dataclass
class EndToEnd:
    """The demo pipeline's run: its stage times, and what the later sections read."""

    seconds: dict
    raw: Path
    run: Path
    train_steps: int
    metrics: dict


def end_to_end(work: Path, size: dict, fast_conf: Path, progress: bool, log, device: torch.device) -> EndToEnd:
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
    trained = Trainer(scan, run, fast_conf, overrides, device=device, progress=progress,
                      overwrite=True).run()
    e2e["train_s"] = time.perf_counter() - t0
    e2e["train_iters"] = trained.step
    log("e2e: eval")
    t0 = time.perf_counter()
    metrics = evaluate(run, mc_resolution=size["mc_res"], views=size["eval_views"], device=device, progress=progress)
    e2e["eval_s"] = time.perf_counter() - t0
    e2e["total_s"] = sum(e2e[k] for k in ("sample_s", "preprocess_s", "train_s", "eval_s"))
    return EndToEnd(seconds=e2e, raw=raw, run=run, train_steps=trained.step, metrics=metrics)


def eval_section(metrics: dict, mc_resolution: int) -> dict:
    """Marching cubes' cost in the end-to-end eval, from its metrics.json."""
    mc = metrics.get("marching_cubes", {})
    return {"mc_resolution": mc_resolution, "mc_s": metrics["timings"].get("marching_cubes_s"),
            "mc_sdf_evals": mc.get("n_sdf_evals"), "mc_dense_evals": mc.get("dense_evals"),
            "mc_eval_saving": (mc["dense_evals"] / mc["n_sdf_evals"]) if mc.get("n_sdf_evals") else None,
            "eval_peak_rss_mb": metrics.get("peak_rss_mb"), "eval_total_s": metrics["timings"]["total_s"],
            "mc_error": mc.get("error")}


def train_speed_section(scan: Path, work: Path, size: dict, fast_conf: Path, test_conf: Path, matmul_gflop_s: float,
                        log, device: torch.device) -> list[dict]:
    """Both confs' training speed with each tracer, and the FLOP rate against the machine's matmul."""
    speed = []
    for conf_path, iters in ((fast_conf, size["speed_iters"]), (test_conf, size["test_conf_iters"])):
        # test.conf's network at the scan's size: the image resolution does not change the cost per ray.
        ov = {"dataset.img_res": []} if conf_path == test_conf else {}
        if conf_path == test_conf and "test_conf_batch" in size:
            ov["train.batch_size"] = size["test_conf_batch"]
        for mode in TRACERS:
            log(f"train speed: {conf_path.name} {mode}")
            speed.append(bench_train_speed(scan, conf_path, mode, iters, size["speed_warmup"], work, ov, device))
    for row in speed:
        row["flop_rate_vs_matmul"] = row["achieved_gflop_s"] / matmul_gflop_s
    return speed


def quality_section(e2e: EndToEnd) -> dict:
    """The end-to-end run's meshes scored against the sample's truth."""
    quality = {"train_iters": e2e.train_steps, "psnr_mean": e2e.metrics.get("rendering", {}).get("psnr_mean")}
    for name in ("detailed.obj", "detailed_subdivided.obj"):
        sc = score_mesh(e2e.run / "eval" / name, e2e.raw)
        quality[name] = {k: sc[k] for k in ("normal_error_ratio", "displacement_correlation", "albedo_leak",
                                            "displacement_rms_mm", "normal_error_deg", "coarse_normal_error_deg")}
    return quality
