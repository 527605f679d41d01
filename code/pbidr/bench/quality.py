"""``pbidr bench quality``: the ray/MLP detail mode's quality against the built-in sample's ground truth,
over seeds, conf variants (the ablation's levers) and training time.

For every (variant, seed): ``pbidr sample --seed S`` -> preprocess (17 views at --res) -> train (one
process per run, --jobs at a time, each with --threads torch threads, on --device) -> for every step in
--curve (and the last): the coarse mesh displaced by the checkpoint's SDF (eval's ``detailed.obj``)
scored with ``pbidr score``. Writes OUT/quality.json, the table OUT/quality.md and OUT/quality_curve.png.

Variants are conf overrides on top of --conf (default confs/fast_mlp.conf): ``VARIANTS`` holds the
ablation's levers, each switching one choice of the detail mode off."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pbidr.bench.common import cell, check_conf, machine_info, write_report
from pbidr.commands.args import nonneg_float, nonneg_int_list, positive_int, positive_int_list, work_folder
from pbidr.utils.plot import line_chart

REPO = Path(__file__).resolve().parents[3]

# Each lever of the detail mode switched off (relative to confs/fast_mlp.conf); "conf" names another conf.
VARIANTS: dict[str, dict[str, object]] = {
    "full": {},
    "pbidr_cpu": {"conf": "confs/fast_pbidr.conf"},  # the previous default: PBIDR's model at CPU size
    # 1. start from a sphere (IDR's init) instead of the coarse shape; the sphere needs the mask loss,
    # out-of-mask rays and the faithful tracer's fallback.
    "sphere_init": {"model.sdf_network.parameterisation": "sphere", "model.ray_tracer.fallback": True,
                    "model.ray_tracer.search_outside": True, "model.ray_tracer.band": 0.05,
                    "model.ray_tracer.band_steps": 10, "loss.mask_weight": 100.0, "train.mask_ray_fraction": 0.0},
    # 2. 256^2 images.
    "res256": {"dataset.img_res": [256, 256]},
    # 3. no low-frequency control: no local-mean penalty, no coarse-to-fine encoding.
    "no_lowpass": {"loss.residual_lowpass_weight": 0.0, "model.sdf_network.coarse_to_fine_iters": 0},
    # 4. shading split as in PBIDR: diffuse on the coarse normal.
    "diffuse_coarse_normal": {"model.diffuse_normal": "coarse"},
    # 5. the geometry learning as fast as the appearance.
    "geometry_lr_1": {"train.sdf_lr_factor": 1.0},
    # the piecewise-constant albedo prior switched on (off in fast_mlp.conf).
    "albedo_prior": {"model.albedo_smoothness_step": 0.005, "loss.albedo_smoothness_weight": 0.5},
}


def _variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",")]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(map(repr, bad))}; known: {', '.join(VARIANTS)}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", "--out", dest="out", type=work_folder, required=True, metavar="DIR",
                   help="work folder (samples, scans, runs, quality.json)")
    p.add_argument("--seeds", type=nonneg_int_list, default="0,1,2", help="built-in samples' seeds (default 0,1,2)")
    p.add_argument("--variants", type=_variants, default="full", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--iters", type=positive_int, default=None, help="training iterations (default: the conf's)")
    p.add_argument("--curve", type=positive_int_list, default="", help="also score these steps, e.g. 300,600,1500")
    p.add_argument("--conf", default=str(REPO / "confs" / "fast_mlp.conf"), help="the base conf (default "
                   "confs/fast_mlp.conf)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads per run (default 2)")
    p.add_argument("--res", type=positive_int, default=1024, help="preprocess resolution (default 1024)")
    p.add_argument("--time-budget", type=nonneg_float, default=0.0, help="stop each training after this many seconds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra conf override for every run")


@dataclass
class QualityPlan:
    """What every run of one `pbidr bench quality` shares."""

    out: Path
    seeds: list[int]
    variants: list[str]
    iters: int
    steps: list[int]  # the checkpoints scored: the --curve steps below iters, and iters
    conf: Path
    jobs: int
    threads: int
    res: int
    device: str
    extra: list[str]  # the train options every run gets (--set, the time budget)


def main(args: argparse.Namespace) -> int:
    sets = args.set + ([f"train.time_budget_s={args.time_budget}"] if args.time_budget > 0 else [])
    conf = check_conf(args.conf, sets, args.iters)  # every run's conf, before any work
    iters = args.iters or conf.train.iters
    extra = [a for s in sets for a in ("--set", s)]
    plan = QualityPlan(Path(args.out), args.seeds, args.variants, iters,
                       sorted({c for c in args.curve if 0 < c < iters} | {iters}), Path(args.conf), args.jobs,
                       args.threads, args.res, str(args.device), extra)
    run_quality(plan)
    return 0


def prepare_scan(root: Path, seed: int, res: int) -> tuple[Path, Path]:
    """Sample folder and scan folder of one seed (made once, reused)."""
    from pbidr.geometry.cameras import Rig
    from pbidr.preprocess.pipeline import preprocess
    from pbidr.preprocess.sample import make_sample

    raw, scan = root / f"raw{seed}", root / f"scan{seed}_{res}"
    if not (raw / "sample.json").is_file():
        make_sample(raw, seed=seed)
    if not (scan / "cameras.npz").is_file():
        preprocess(raw, scan, Rig(res=res), progress=False)
    return raw, scan


def run_quality(plan: QualityPlan) -> dict:
    """Every (variant, seed) run, --jobs at a time; the report is rewritten as each one finishes."""
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "runs").mkdir(exist_ok=True)
    scans = {s: prepare_scan(plan.out, s, plan.res) for s in plan.seeds}
    env = dict(os.environ, OMP_NUM_THREADS=str(plan.threads), MKL_NUM_THREADS=str(plan.threads))
    pending = [(v, s) for v in plan.variants for s in plan.seeds]
    active, results = {}, {}
    t_start = time.perf_counter()
    while pending or active:
        while pending and len(active) < plan.jobs:
            variant, seed = pending.pop(0)
            active[(variant, seed)] = _start_run(plan, variant, seed, scans[seed], env)
        time.sleep(2.0)
        for (variant, seed), (proc, exp, log) in list(active.items()):
            if proc.poll() is None:
                continue
            log.close()
            del active[(variant, seed)]
            entry = {"returncode": proc.returncode}
            if (exp / "quality_entry.json").is_file():
                entry = json.loads((exp / "quality_entry.json").read_text())
            entry.update({"variant": variant, "seed": seed})
            results[f"{variant}_seed{seed}"] = entry
            _report(plan, t_start, results)
            print(f"[quality] {variant} seed {seed}: {_entry_line(entry)}", flush=True)
    return _report(plan, t_start, results)


def _start_run(plan: QualityPlan, variant: str, seed: int, scan: tuple[Path, Path], env: dict):
    """Start one run's process (pbidr.bench.quality_run); its output goes to runs/VARIANT_seedS.log."""
    exp = plan.out / "runs" / f"{variant}_seed{seed}"
    if exp.exists():
        shutil.rmtree(exp)  # this benchmark's own run folder
    lever = VARIANTS[variant]
    train = [sys.executable, "-m", "pbidr.commands", "train", "--data", str(scan[1]), "--exp-dir", str(exp),
             "--conf", str(REPO / lever["conf"]) if "conf" in lever else str(plan.conf),
             "--iters", str(plan.iters), "--device", plan.device, "--quiet",
             "--set", "train.plot_freq=0", "--set", f"train.keep_checkpoints={len(plan.steps) + 1}",
             "--set", "train.checkpoint_seconds=0",
             "--set", f"train.checkpoint_freq={math.gcd(*plan.steps)}",  # a checkpoint at every curve step
             *_override_args(lever), *plan.extra]
    job = [sys.executable, "-m", "pbidr.bench.quality_run", json.dumps(
        {"exp": str(exp), "sample": str(scan[0]), "steps": plan.steps, "train": train})]
    log = open(plan.out / "runs" / f"{variant}_seed{seed}.log", "w")
    return subprocess.Popen(job, env=env, stdout=log, stderr=subprocess.STDOUT), exp, log


def _override_args(overrides: dict[str, object]) -> list[str]:
    args = []
    for key, value in overrides.items():
        if key == "conf":
            continue
        text = json.dumps(value) if not isinstance(value, str) else value
        if isinstance(value, bool):
            text = "true" if value else "false"
        args += ["--set", f"{key}={text}"]
    return args


def _entry_line(entry: dict) -> str:
    if entry.get("returncode") != 0 or "normal_error_ratio" not in entry:
        return f"FAILED (rc {entry.get('returncode')})"
    return (f"ratio {cell(entry['normal_error_ratio'], '.3f')} corr {cell(entry['displacement_correlation'], '.3f')} "
            f"rms {cell(entry['displacement_rms_mm'], '.3f')} mm leak {cell(entry['albedo_leak'], '.2f')} "
            f"step {entry['step']} ({cell(entry['s_per_iter'], '.3f')} s/it)")


def _report(plan: QualityPlan, t_start: float, results: dict) -> dict:
    """Write quality.json / quality.md / quality_curve.png with the runs finished so far (so a cut-off
    run keeps them)."""
    from pbidr.utils.images import write_png

    report = {"machine": machine_info(plan.device), "seeds": plan.seeds,
              "variants": {v: VARIANTS[v] for v in plan.variants}, "iters": plan.iters, "curve_steps": plan.steps,
              "threads_per_run": plan.threads, "jobs": plan.jobs, "res": plan.res, "conf": str(plan.conf),
              "extra": plan.extra, "wall_s": time.perf_counter() - t_start, "runs": results}
    write_report(plan.out / "quality.json", report, plan.out / "quality.md", markdown(report))
    write_png(plan.out / "quality_curve.png", plot_curve(report))
    return report


def plot_curve(report: dict, seconds_per_iter: float | None = None, size: tuple[int, int] = (900, 520)) -> np.ndarray:
    """Normal-error ratio against training step (or minutes, given ``seconds_per_iter``), one line per
    variant (mean over its runs at the steps every run reached), as an RGB image (uint8)."""
    curves: dict[str, dict[int, list[float]]] = {}
    finals: dict[str, list[tuple[int, float]]] = {}
    for e in report["runs"].values():
        curve = e.get("curve", [])
        for c in curve[:-1]:
            curves.setdefault(e["variant"], {}).setdefault(int(c["step"]), []).append(float(c["normal_error_ratio"]))
        if curve:  # the last checkpoint: a time budget stops seeds at different steps, so it is averaged apart
            finals.setdefault(e["variant"], []).append((int(curve[-1]["step"]), float(curve[-1]["normal_error_ratio"])))
    n_runs: dict[str, int] = {}
    for e in report["runs"].values():
        n_runs[e["variant"]] = n_runs.get(e["variant"], 0) + 1
    lines = {v: sorted((k, float(np.mean(r))) for k, r in pts.items() if len(r) == n_runs[v])
             for v, pts in curves.items()}
    for v, pts in finals.items():
        if len(pts) == n_runs[v]:
            lines.setdefault(v, []).append((int(np.mean([k for k, _ in pts])), float(np.mean([r for _, r in pts]))))
    lines = {v: pts for v, pts in lines.items() if pts}
    x_scale = (seconds_per_iter / 60.0) if seconds_per_iter else 1.0
    scaled = {v: [(k * x_scale, r) for k, r in pts] for v, pts in sorted(lines.items())}
    xlabel = ("minutes of training" if seconds_per_iter else "training step") + "  (y: normal-error ratio)"
    return line_chart(scaled, xlabel, refs=[(1.0, "coarse mesh"), (0.75, "target")], size=size)


def markdown(report: dict) -> str:
    lines = ["| variant | seed | step | ratio | correlation | RMS (mm) | leak | s/it |",
             "|---|---|---|---|---|---|---|---|"]
    for e in report["runs"].values():
        if e.get("returncode") != 0 or "normal_error_ratio" not in e:
            lines.append(f"| {e['variant']} | {e['seed']} | failed | | | | | |")
            continue
        cells = [cell(e[k], f) for k, f in (("normal_error_ratio", ".3f"), ("displacement_correlation", ".3f"),
                                               ("displacement_rms_mm", ".3f"), ("albedo_leak", ".2f"),
                                               ("s_per_iter", ".3f"))]
        lines.append(f"| {e['variant']} | {e['seed']} | {e['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
