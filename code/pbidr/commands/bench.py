"""``pbidr bench``: the benchmarks on the built-in sample (the sections of BENCHMARKS.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pbidr.commands.args import positive_int
from pbidr.errors import PbidrError

# The handler imports the stage's implementation when the command runs: building the parser (every
# call, `pbidr --help` too) needs only the flags, and stays light.


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="benchmarks (see script/benchmark.sh)",
                              description="Benchmarks on the built-in sample. render: the preprocess renderer; all: "
                                          "every section of BENCHMARKS.md (script/benchmark.sh).")
    p.add_argument("what", choices=["render", "all"],
                   help="render: 17 views at 1024^2 of the built-in sample; all: every section (script/benchmark.sh)")
    p.add_argument("--quick", action="store_true", help="with all: shrink every size (about a minute)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--repeat", type=positive_int, default=None, help="render: runs; the median is reported (default 3)")
    p.add_argument("--res", type=positive_int, default=None, help="render: image size (default 1024)")
    p.add_argument("--views", type=positive_int, default=None, help="render: number of views (default 17)")
    p.add_argument("--renderer", choices=["embree", "pytorch3d"], default=None, help="render: embree (default)")
    p.add_argument("--workdir", default=None, help="render: where the sample is written (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the results to this JSON file (all: bench/results.json)")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from pbidr.bench import run_bench

    if args.what == "all":
        # `bench all` sizes every section itself (--quick shrinks them); these would be silently ignored
        given = [f for f, v in (("--repeat", args.repeat), ("--res", args.res), ("--views", args.views),
                                ("--renderer", args.renderer), ("--workdir", args.workdir)) if v is not None]
        if given:
            raise PbidrError(f"{', '.join(given)}: apply to `pbidr bench render` only (bench all: --quick, --json)")
    elif args.quick:
        raise PbidrError("--quick: applies to `pbidr bench all` only")
    else:
        args.repeat = 3 if args.repeat is None else args.repeat
        args.res = 1024 if args.res is None else args.res
        args.views = 17 if args.views is None else args.views
        args.renderer = args.renderer or "embree"
        if args.workdir is not None and Path(args.workdir).exists() and not Path(args.workdir).is_dir():
            raise PbidrError(f"--workdir {args.workdir}: exists and is not a folder")
    if args.json is not None and Path(args.json).is_dir():
        raise PbidrError(f"--json {args.json}: is a folder; give a file name")
    return run_bench(args)
