"""``pbidr score``: a mesh scored against the built-in sample's true detail (:mod:`pbidr.evaluation.score`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pbidr.errors import PbidrError
from pbidr.evaluation.score import score_mesh
from pbidr.utils.atomic import write_json

# pick_device is imported when the command runs, as the other handlers import their stage's modules:
# building the parser (every call, `pbidr --help` too) needs only the flags.


def add_score_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``pbidr score`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "score",
        help="score a mesh against the built-in sample's true detail (normals, displacement, albedo leak)",
        description="Score MESH (world frame, mm; any topology: detailed.obj, detailed_subdivided.obj, sdf_mc.ply) "
                    "against the known detailed surface of a 'pbidr sample' folder. Prints JSON, or writes it to --out.",
    )
    p.add_argument("--input", "-i", "--mesh", dest="mesh", required=True, metavar="MESH",
                   help="mesh to score (.obj, .ply, .glb, .gltf)")
    p.add_argument("--sample", required=True, help="folder written by 'pbidr sample' (holds sample.json)")
    p.add_argument("--output", "-o", "--out", dest="out", default=None, metavar="JSON",
                   help="write the JSON here (atomically) instead of printing it")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N (checked; scoring runs on the CPU: closest points with trimesh)")
    p.set_defaults(func=cmd_score)
    return p


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else str(x)


def cmd_score(args: argparse.Namespace) -> int:
    from pbidr.utils.device import pick_device

    pick_device(args.device)
    if args.out is not None and Path(args.out).is_dir():
        raise PbidrError(f"--output {args.out}: is a folder; give a JSON file name")
    result = score_mesh(args.mesh, args.sample)
    if args.out:
        write_json(args.out, result)
        print(f"score written to {args.out}: normal error {_fmt(result['normal_error_deg']['mean'])} deg "
              f"(ratio to coarse {_fmt(result['normal_error_ratio'])}), displacement r "
              f"{_fmt(result['displacement_correlation'])}, albedo leak {_fmt(result['albedo_leak'])}, ceiling "
              f"{_fmt(result['ceiling_ratio'])}, recovered fraction {_fmt(result['recovered_fraction'])}")
    else:
        print(json.dumps(result, indent=2))
    return 0
