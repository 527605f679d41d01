"""One run of ``pbidr bench quality``, in a process of its own (so each run has its own torch threads
and its own log): train (a `pbidr train` subprocess), then score its checkpoints against the sample's
truth. :mod:`pbidr.bench.quality` starts it as ``python -m pbidr.bench.quality_run SPEC`` (SPEC: the
run's JSON); it is not a command of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn.utils import parametrize

from pbidr.datasets.scan import load_scan
from pbidr.evaluation.displacement import displace_along_normals
from pbidr.evaluation.run_eval import prepare_model, world_sdf
from pbidr.evaluation.score import score_mesh
from pbidr.io.obj import write_obj
from pbidr.training.checkpoints import available_steps, checkpoint_path, load_checkpoint, load_run
from pbidr.utils.atomic import write_json


def score_checkpoint(exp_dir: Path, step: int | str, sample_dir: Path, out_obj: Path) -> dict:
    """Displace the coarse mesh by the checkpoint's SDF (eval's detailed.obj) and score it."""
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


def _s_per_iter(exp: Path) -> float | None:
    """The training's seconds per iteration, from the last line of its log.txt."""
    for line in reversed((exp / "log.txt").read_text().splitlines()):
        if "s/it" in line and line.startswith("# finished"):
            return float(line.split(" s/it")[0].split(",")[-1])
    return None


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    run_job(Path(spec["exp"]), Path(spec["sample"]), spec["steps"], spec["train"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
