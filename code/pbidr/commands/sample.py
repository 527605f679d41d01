"""``pbidr sample``: the built-in procedural face."""

from __future__ import annotations

import argparse
from pathlib import Path

from pbidr.commands.args import add_device_arg, add_overwrite_arg, nonneg_int, positive_int

# The handler imports the stage's implementation when the command runs: building the parser (every
# call, `pbidr --help` too) needs only the flags, and stays light.


def add_sample_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample", help="write the built-in procedural face (coarse textured mesh + ground truth)",
        description="Write the built-in procedural face: a coarse textured mesh (mesh.obj/.mtl/.png, millimetres, "
                    "face toward +z) and its ground truth (gt_detailed.obj, displacements, albedo, one mask per mark "
                    "kind; sample.json: the light and every condition) for `pbidr score`. Conditions (light "
                    "direction, glossy lobe, fill, marks by kind, detail by kind, texture size, coarse misfit, "
                    "renderer) come from --preset and --set; --list prints them.")
    p.add_argument("--output", "-o", default=None, help="folder to write (new or empty; see --overwrite)")
    add_overwrite_arg(p, "sample")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed: draws mark and pore positions, wrinkle "
                                                             "patches, folds and the misfit (default 0)")
    p.add_argument("--preset", default="classic", help="named conditions (default classic: the first sample); "
                                                      "`--list` prints them")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one condition knob over the preset, e.g. --set lighting.angle_deg=60 --set marks.grey=300 "
                        "(repeatable; `--list` prints every knob)")
    p.add_argument("--texture-size", type=positive_int, default=None, help="texture side in texels (default: the "
                                                                          "preset's, 1024)")
    p.add_argument("--list", action="store_true", help="print every condition knob and preset, and exit")
    add_device_arg(p, " (checked; the sample is made on the CPU)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_sample)
    return p


def cmd_sample(args: argparse.Namespace) -> int:
    from pbidr.errors import PbidrError
    from pbidr.preprocess.conditions import apply_settings, conditions_for, describe, parse_settings
    from pbidr.preprocess.sample import make_sample
    from pbidr.utils.device import pick_device

    if args.list:
        print(describe())
        return 0
    if args.output is None:
        raise PbidrError("--output: required (the folder to write)")
    pick_device(args.device)  # checked like every stage's, though the sample is made with numpy
    conditions = conditions_for(args.preset)
    for item in args.set:  # one at a time, so that an error names the item
        try:
            conditions = apply_settings(conditions, parse_settings([item]))
        except PbidrError as exc:
            raise PbidrError(f"--set {item}: {exc}") from None
    if args.texture_size is not None:
        conditions = apply_settings(conditions, {"texture_size": args.texture_size})
    info = make_sample(args.output, seed=args.seed, overwrite=args.overwrite, conditions=conditions,
                       preset=args.preset)
    print(f"sample written to {Path(args.output)} ({info})" if args.verbose else f"sample written to {args.output}")
    return 0
