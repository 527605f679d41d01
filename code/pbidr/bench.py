"""``pbidr bench``: measured numbers, printed and optionally written as JSON."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from pbidr.utils.atomic import write_json


def machine_info() -> dict:
    import torch

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
    from pbidr.geometry.cameras import Rig, bounding_sphere, scale_matrix
    from pbidr.io.load import load_mesh
    from pbidr.preprocess.pipeline import preprocess
    from pbidr.preprocess.render import make_renderer
    from pbidr.preprocess.sample import make_sample

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
        preprocess(raw, workdir / "scan", rig, renderer=renderer, progress=False)
        pre_runs.append(time.perf_counter() - t0)
    return {
        "renderer": renderer, "views": views, "res": res, "repeat": repeat,
        "faces": int(len(mesh.faces)),
        "render_s_median": statistics.median(render_runs), "render_s_runs": render_runs,
        "preprocess_s_median": statistics.median(pre_runs), "preprocess_s_runs": pre_runs,
        "target_s": 10.0,
    }


def run_bench(args: argparse.Namespace) -> int:
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
