"""``pbidr bench quality``: detail quality against the built-in sample's ground truth, over seeds,
conf variants (the ablation's levers) and training time.

For every (variant, seed): ``pbidr sample --seed S`` -> preprocess (17 views at 1024²) -> train
(one subprocess per run, ``--jobs`` at a time, each with ``--threads`` torch threads) -> for every
step in ``--curve`` (and the last): the coarse mesh displaced by the checkpoint's SDF
(``detailed.obj``, exactly as eval writes it) scored with ``pbidr score``. Results go to
``OUT/quality.json`` and a Markdown table ``OUT/quality.md``; nothing here is a timed unit test.

Variants are conf overrides on top of ``--conf`` (default confs/fast_mlp.conf, the ray/MLP detail mode): ``VARIANTS`` holds the
ablation's levers, each switching one choice of the detail mode off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pbidr.training.checkpoints import available_steps, checkpoint_path, load_checkpoint, load_run
from pbidr.utils.atomic import write_json, write_text
from pbidr.utils.plot import line_chart

REPO = Path(__file__).resolve().parents[2]

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


def score_checkpoint(exp_dir: Path, step: int | str, sample_dir: Path, out_obj: Path) -> dict:
    """Displace the coarse mesh by the checkpoint's SDF (eval's detailed.obj) and score it."""
    import torch
    from torch.nn.utils import parametrize

    from pbidr.datasets.scan import load_scan
    from pbidr.evaluation.displacement import displace_along_normals
    from pbidr.evaluation.run_eval import prepare_model, world_sdf
    from pbidr.evaluation.score import score_mesh
    from pbidr.io.obj import write_obj

    run = load_run(exp_dir, step)
    model = run.model.eval()
    data = load_scan(run.scan_dir, (8, 8), [0])
    prepare_model(model, data.mesh, data.scale_mat, run.step)
    with torch.no_grad(), parametrize.cached():
        detailed, _ = displace_along_normals(data.mesh, world_sdf(model.sdf_network.sdf, data.scale_mat))
    write_obj(out_obj, detailed, write_texture=False)
    result = score_mesh(out_obj, sample_dir)
    return {k: result[k] for k in ("normal_error_ratio", "displacement_correlation", "displacement_rms_mm",
                                   "albedo_leak")} | {"step": run.step}


def run_job(exp: Path, sample: Path, steps: list[int], train_cmd: list[str]) -> dict:
    """One run: train (a subprocess), then score its checkpoints at ``steps`` (those it reached)
    and its last one; the entry is also written to ``exp/quality_entry.json``."""
    t0 = time.perf_counter()
    proc = subprocess.run(train_cmd)
    entry: dict = {"train_wall_s": time.perf_counter() - t0, "returncode": proc.returncode}
    if proc.returncode == 0:
        entry["s_per_iter"] = _s_per_iter(exp)
        have = [c for c in steps if c in available_steps(exp)]
        entry["curve"] = [score_checkpoint(exp, c, sample, exp / f"detailed_{c}.obj") for c in have]
        last = load_checkpoint(checkpoint_path(exp))["step"]
        if not have or have[-1] != last:
            entry["curve"].append(score_checkpoint(exp, "latest", sample, exp / "detailed_latest.obj"))
        entry.update(entry["curve"][-1])
    write_json(exp / "quality_entry.json", entry)
    return entry


def run_quality(out: Path, seeds: list[int], variants: list[str], iters: int, curve: list[int], conf: Path,
                jobs: int, threads: int, res: int, device: str, extra: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    scans = {s: prepare_scan(out, s, res) for s in seeds}
    runs = [(v, s) for v in variants for s in seeds]
    steps = sorted({c for c in curve if 0 < c < iters} | {iters})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, active, results = list(runs), {}, {}
    t_start = time.perf_counter()
    while pending or active:
        while pending and len(active) < jobs:
            variant, seed = pending.pop(0)
            exp = out / "runs" / f"{variant}_seed{seed}"
            if exp.exists():
                shutil.rmtree(exp)  # this benchmark's own run folder
            train = [sys.executable, "-m", "pbidr.commands", "train", "--data", str(scans[seed][1]), "--exp-dir", str(exp),
                     "--conf", str(REPO / VARIANTS[variant]["conf"]) if "conf" in VARIANTS[variant] else str(conf),
                     "--iters", str(iters), "--device", device, "--quiet",
                     "--set", "train.plot_freq=0", "--set", f"train.keep_checkpoints={len(steps) + 1}",
                     "--set", "train.checkpoint_seconds=0",
                     "--set", f"train.checkpoint_freq={math.gcd(*steps)}",  # a checkpoint at every curve step
                     *_override_args(VARIANTS[variant]), *extra]
            job = [sys.executable, "-m", "pbidr.bench_quality", "job", json.dumps(
                {"exp": str(exp), "sample": str(scans[seed][0]), "steps": steps, "train": train})]
            log = open(out / "runs" / f"{variant}_seed{seed}.log", "w")
            active[(variant, seed)] = (subprocess.Popen(job, env=env, stdout=log, stderr=subprocess.STDOUT), exp, log)
        time.sleep(2.0)
        for key, (proc, exp, log) in list(active.items()):
            if proc.poll() is None:
                continue
            log.close()
            del active[key]
            variant, seed = key
            entry = {"returncode": proc.returncode}
            if (exp / "quality_entry.json").is_file():
                entry = json.loads((exp / "quality_entry.json").read_text())
            entry.update({"variant": variant, "seed": seed})
            results[f"{variant}_seed{seed}"] = entry
            _report(out, seeds, variants, iters, steps, threads, jobs, res, conf, extra, t_start, results)
            ok = entry.get("returncode") == 0 and "normal_error_ratio" in entry
            print(f"[quality] {variant} seed {seed}: " + (
                f"ratio {_num(entry['normal_error_ratio'], '.3f')} corr {_num(entry['displacement_correlation'], '.3f')} "
                f"rms {_num(entry['displacement_rms_mm'], '.3f')} mm leak {_num(entry['albedo_leak'], '.2f')} "
                f"step {entry['step']} ({_num(entry['s_per_iter'], '.3f')} s/it)" if ok else f"FAILED (rc {entry.get('returncode')})"), flush=True)
    return _report(out, seeds, variants, iters, steps, threads, jobs, res, conf, extra, t_start, results)


def _report(out, seeds, variants, iters, steps, threads, jobs, res, conf, extra, t_start, results) -> dict:
    """Write quality.json / quality.md with the runs finished so far (so a cut-off run keeps them)."""
    from pbidr.bench import machine_info

    report = {"machine": machine_info(), "seeds": seeds, "variants": {v: VARIANTS[v] for v in variants},
              "iters": iters, "curve_steps": steps, "threads_per_run": threads, "jobs": jobs, "res": res,
              "conf": str(conf), "extra": extra, "wall_s": time.perf_counter() - t_start, "runs": results}
    write_json(out / "quality.json", report)
    write_text(out / "quality.md", markdown(report))
    from pbidr.utils.images import write_png

    write_png(out / "quality_curve.png", plot_curve(report))
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


def _s_per_iter(exp: Path) -> float | None:
    for line in reversed((exp / "log.txt").read_text().splitlines()):
        if "s/it" in line and line.startswith("# finished"):
            return float(line.split(" s/it")[0].split(",")[-1])
    return None


def _num(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else str(x)


def markdown(report: dict) -> str:
    lines = ["| variant | seed | step | ratio | correlation | RMS (mm) | leak | s/it |",
             "|---|---|---|---|---|---|---|---|"]
    for e in report["runs"].values():
        if e.get("returncode") != 0 or "normal_error_ratio" not in e:
            lines.append(f"| {e['variant']} | {e['seed']} | failed | | | | | |")
            continue
        cells = [_num(e[k], f) for k, f in (("normal_error_ratio", ".3f"), ("displacement_correlation", ".3f"),
                                                ("displacement_rms_mm", ".3f"), ("albedo_leak", ".2f"),
                                                ("s_per_iter", ".3f"))]
        lines.append(f"| {e['variant']} | {e['seed']} | {e['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["job"]:  # internal: one run, spawned by run_quality
        spec = json.loads(argv[1])
        run_job(Path(spec["exp"]), Path(spec["sample"]), spec["steps"], spec["train"])
        return 0
    p = argparse.ArgumentParser(prog="python -m pbidr.bench_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="work folder (samples, scans, runs, quality.json)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="full", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the conf's)")
    p.add_argument("--curve", default="", help="also score these steps, e.g. 300,600,1500")
    p.add_argument("--conf", default=str(REPO / "confs" / "fast_mlp.conf"))
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--res", type=int, default=1024, help="preprocess resolution")
    p.add_argument("--device", default="cpu")
    p.add_argument("--time-budget", type=float, default=0.0, help="stop each training after this many seconds")
    p.add_argument("--set", action="append", default=[], help="extra conf override for every run")
    args = p.parse_args(argv)
    from pbidr.training.conf import load_conf

    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; known: {list(VARIANTS)}")
    iters = args.iters or load_conf(args.conf).train.iters
    extra = [a for s in args.set for a in ("--set", s)]
    if args.time_budget > 0:
        extra += ["--set", f"train.time_budget_s={args.time_budget}"]
    run_quality(Path(args.out), [int(s) for s in args.seeds.split(",")], args.variants.split(","), iters,
                [int(c) for c in args.curve.split(",") if c], Path(args.conf), args.jobs, args.threads, args.res,
                args.device, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
