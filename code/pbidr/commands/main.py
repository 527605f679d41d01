"""The ``pbidr`` command: one subcommand per stage (sample, photo, preprocess, train, eval, score, batch, view, bench)."""

from __future__ import annotations

import argparse
import sys

from pbidr.version import __version__
from pbidr.commands.args import OneLineParser
from pbidr.commands.batch import add_batch_parser
from pbidr.commands.bench import add_bench_parser
from pbidr.commands.eval import add_eval_parser
from pbidr.commands.photo import add_photo_parser
from pbidr.commands.preprocess import add_preprocess_parser
from pbidr.commands.sample import add_sample_parser
from pbidr.commands.score import add_score_parser
from pbidr.commands.train import add_train_parser
from pbidr.commands.view import add_view_parser
from pbidr.errors import PbidrError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="pbidr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pbidr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order that --help and the invalid-choice error list them
    add_sample_parser(sub)
    add_preprocess_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_score_parser(sub)
    add_photo_parser(sub)
    add_batch_parser(sub)
    add_view_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already reported in one line)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except PbidrError as err:
        print(f"pbidr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pbidr {args.command}: interrupted", file=sys.stderr)
        return 130
