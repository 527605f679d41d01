"""``pbidr bench VERB``: the project's benchmarks, one verb each (the sections of BENCHMARKS.md); the
work lives in :mod:`pbidr.bench`."""

from __future__ import annotations

import argparse
import re

from pbidr.bench import batch, matrix, quality, render, suite, texel
from pbidr.commands.args import add_device_arg

# verb -> (its module, which has add_arguments(parser) and main(args) -> int; its one-line help). A new
# verb is its import above and its line here. Every verb gets --device from this registry, resolved and
# checked before its main runs (main sees a torch.device), so no verb adds it itself. The verb modules
# import the stages they run inside main: this parser is built on every pbidr call, --help included.
VERBS = {
    "all": (suite, "every section of BENCHMARKS.md on the built-in sample (script/benchmark.sh)"),
    "render": (render, "the preprocess renderer: 17 views at 1024^2 of the built-in sample"),
    "quality": (quality, "the ray/MLP detail mode's quality over seeds, variants and training time"),
    "texel": (texel, "the texel fit over seeds, levers and the oracle (BENCHMARKS.md, 'Texel fit')"),
    "matrix": (matrix, "the texel fit over a family of faces (conditions x seeds): worst, median, contact sheet"),
    "batch": (batch, "pbidr batch's local and Ray engines on the same subjects (script/bench_batch.sh)"),
}


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="benchmarks: " + ", ".join(VERBS) + " (see script/benchmark.sh)",
                              description="Benchmarks on the built-in sample, one verb each; "
                                          "`pbidr bench VERB --help` for a verb's flags.")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (module, summary) in VERBS.items():
        v = verbs.add_parser(name, help=summary, description=_plain(module.__doc__ or summary),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(v)
        # cpu unless asked: the numbers of BENCHMARKS.md compare across runs only on the same device
        add_device_arg(v, " (default cpu)", default="cpu")
        # command: the error lines name the verb ("pbidr bench texel: error: ...")
        v.set_defaults(func=cmd_bench, bench_main=module.main, command=f"bench {name}")
    return p


def _plain(doc: str) -> str:
    """A module docstring as --help text: without its reST markup (``x``, :mod:`x`)."""
    return re.sub(r":\w+:`([^`]*)`", r"\1", doc).replace("``", "")


def cmd_bench(args: argparse.Namespace) -> int:
    from pbidr.utils.device import pick_device

    args.device = pick_device(args.device)
    return args.bench_main(args)
