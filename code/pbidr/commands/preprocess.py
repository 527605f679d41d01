"""``pbidr preprocess``: a textured mesh rendered from a view rig into an IDR scan directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from pbidr.commands.args import add_device_arg, add_overwrite_arg
from pbidr.commands.rig import add_rig_args, rig_from_args

# The handler imports the stage's implementation when the command runs: building the parser (every
# call, `pbidr --help` too) needs only the flags, and stays light.


def add_preprocess_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "preprocess", help="render a textured mesh from a view rig into an IDR scan directory",
        description="Render a textured mesh (OBJ+MTL+texture, PLY with vertex colours, or glTF) unlit from a view "
                    "rig into an IDR-format scan directory (image/, mask/, cameras.npz, mesh.obj, views.png, "
                    "meta.json).")
    p.add_argument("--input", "-i", required=True, help="mesh file, or folder holding mesh.obj/.ply/.glb/.gltf")
    p.add_argument("--output", "-o", required=True, help="scan directory to write (new or empty; see --overwrite)")
    add_overwrite_arg(p, "preprocess")
    p.add_argument("--units", choices=["mm", "cm", "m"], default=None,
                   help="the mesh's length unit, recorded in meta.json (eval prints millimetres from it); default: "
                        "millimetres, with a warning when the face is not 100-300 units tall")
    p.add_argument("--renderer", choices=["embree", "pytorch3d"], default="embree",
                   help="embree (default) or pytorch3d (optional, needs CUDA torch)")
    add_device_arg(p, " (used by the pytorch3d renderer)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_rig_args(p)
    p.set_defaults(func=cmd_preprocess)
    return p


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pbidr.preprocess.pipeline import preprocess
    from pbidr.utils.device import pick_device

    pick_device(args.device)  # a device that is not there fails now, whichever renderer uses it
    meta = preprocess(args.input, args.output, rig_from_args(args), renderer=args.renderer,
                      margin=args.margin, device=args.device, progress=not args.quiet, overwrite=args.overwrite,
                      units=args.units)
    t = meta["timings"]
    print(f"scan written to {args.output}: {meta['n_views']} views at {meta['image_size'][1]}x{meta['image_size'][0]} "
          f"({meta['renderer']}, render {t['render_s']:.2f} s, total {t['total_s']:.2f} s); contact sheet "
          f"{Path(args.output) / 'views.png'}")
    return 0
