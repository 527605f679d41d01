"""``pbidr sample``: the built-in procedural face."""

from __future__ import annotations

import argparse
from pathlib import Path

from pbidr.commands.args import add_device_arg, add_overwrite_arg, nonneg_int

# The handler imports the stage's implementation when the command runs: building the parser (every
# call, `pbidr --help` too) needs only the flags, and stays light.


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample", help="write the built-in procedural face (coarse textured mesh + ground truth)",
        description="Write the built-in procedural face: a coarse textured mesh (mesh.obj/.mtl/.png, millimetres, "
                    "face toward +z) and its ground truth (gt_detailed.obj, displacements, albedo marks) for "
                    "`pbidr score`.")
    p.add_argument("--output", "-o", required=True, help="folder to write (new or empty; see --overwrite)")
    add_overwrite_arg(p, "sample")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    add_device_arg(p, " (checked; the sample is made on the CPU)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_sample)
    return p


def cmd_sample(args: argparse.Namespace) -> int:
    from pbidr.preprocess.sample import make_sample
    from pbidr.utils.device import pick_device

    pick_device(args.device)  # checked like every stage's, though the sample is made with numpy
    info = make_sample(args.output, seed=args.seed, overwrite=args.overwrite)
    print(f"sample written to {Path(args.output)} ({info})" if args.verbose else f"sample written to {args.output}")
    return 0
