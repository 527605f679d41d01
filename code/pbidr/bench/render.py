"""``pbidr bench render``: the preprocess renderer's speed, 17 views at 1024^2 of the built-in sample by
default: the median of --repeat runs of the rendering alone and of the whole `pbidr preprocess`."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pbidr.bench.common import machine_info, write_report
from pbidr.commands.args import output_file, positive_int, work_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=positive_int, default=3, help="runs; the median is reported (default 3)")
    p.add_argument("--res", type=positive_int, default=1024, help="image size (default 1024)")
    p.add_argument("--views", type=positive_int, default=17, help="number of views (default 17)")
    p.add_argument("--renderer", choices=["embree", "pytorch3d"], default="embree",
                   help="embree (default; on the CPU whatever --device says) or pytorch3d (on --device)")
    p.add_argument("--workdir", type=work_folder, default=None,
                   help="where the sample and its scan are written (default: a temp folder)")
    p.add_argument("--json", type=output_file, default=None, help="also write the results to this JSON file")


def main(args: argparse.Namespace) -> int:
    from pbidr.bench.sections import bench_render

    info = machine_info(args.device)
    with tempfile.TemporaryDirectory(prefix="pbidr-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        result = bench_render(workdir, views=args.views, res=args.res, repeat=args.repeat, renderer=args.renderer,
                              device=args.device)
    print(f"machine: {info['cpu']} ({info['cores']} cores), torch {info['torch']}")
    print(f"render  {result['views']} views at {result['res']}^2 ({result['renderer']}, {result['faces']} faces): "
          f"median {result['render_s_median']:.2f} s render only, {result['preprocess_s_median']:.2f} s whole "
          f"preprocess (target <= {result['target_s']:.0f} s), runs {[round(r, 2) for r in result['render_s_runs']]}")
    if args.json:
        write_report(args.json, {"machine": info, "render": result})
    return 0
