"""The conf arguments shared by ``pbidr train`` and ``pbidr batch``: ``--conf`` / ``--preset``, and the
overrides that ``--iters``, ``--nepoch``, ``--seed`` and ``--set`` make (the conf itself is loaded by
:mod:`pbidr.training.conf`)."""

from __future__ import annotations

import argparse

from pbidr.errors import PbidrError
from pbidr.training.conf import PRESET_HELP, PRESETS, parse_set


def add_conf_args(parser, what: str = "") -> None:
    """``--conf FILE | --preset NAME`` (one of them) on an argparse parser; ``what`` qualifies the conf
    in the help ("train " for batch)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--conf", default=None, metavar="FILE",
                       help=f"HOCON conf{' for ' + what.strip() if what else ''} (default: --preset detail = "
                            "confs/fast.conf; the paper's settings: --preset paper or --conf confs/test.conf)")
    group.add_argument("--preset", choices=list(PRESETS), default=None, help=f"a named {what}conf: {PRESET_HELP}")


def train_overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    """(overrides, labels) from --iters / --nepoch / --seed and --set; a key given both ways is an error."""
    sets = parse_set(args.set)
    flags: dict[str, tuple[str, object]] = {}
    if getattr(args, "iters", None) is not None:
        flags["train.iters"] = (f"--iters {args.iters}", args.iters)
    if getattr(args, "nepoch", None) is not None:
        # epochs count only while train.iters is 0
        flags["train.nepoch"] = (f"--nepoch {args.nepoch}", args.nepoch)
        flags["train.iters"] = (f"--nepoch {args.nepoch}", 0)
    if getattr(args, "seed", None) is not None:
        flags["train.seed"] = (f"--seed {args.seed}", args.seed)
    for key, (label, _) in flags.items():
        if key in sets:
            raise PbidrError(f"{label} and --set {key}={sets[key]}: both set {key}; give only one")
    overrides = dict(sets)
    overrides.update({k: v for k, (_, v) in flags.items()})
    return overrides, {**sets.labels, **{k: label for k, (label, _) in flags.items()}}
