"""``pbidr photo``: one face photo -> a raw textured face mesh (:mod:`pbidr.photo.face_mesh`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pbidr.commands.args import finite_float, nonneg_int
from pbidr.photo.face_mesh import DEFAULT_INTEROCULAR_MM, DEFAULT_SUBDIVIDE, INSTALL_HINT, photo_to_raw

# pick_device is imported when the command runs, as the other handlers import their stage's modules:
# building the parser (every call, `pbidr --help` too) needs only the flags. MediaPipe (optional) is
# imported by face_mesh only when a photo is processed.


def cmd_photo(args: argparse.Namespace) -> int:
    from pbidr.utils.device import pick_device

    pick_device(args.device)  # checked like every stage's; MediaPipe's face mesh runs on the CPU
    info = photo_to_raw(args.image, args.output, subdivide=args.subdivide, interocular_mm=args.interocular,
                        overwrite=args.overwrite)
    t = info["timings"]
    ext = info["extent_mm"]
    print(f"photo mesh written to {args.output}: {info['landmarks']} landmarks, {info['base_triangles']} triangles "
          f"-> {info['faces']:,} faces, {info['vertices']:,} vertices (Loop x{info['subdivide']}), "
          f"{ext[0]:.0f} x {ext[1]:.0f} x {ext[2]:.0f} mm (detect {t['detect_s']:.2f} s, total {t['total_s']:.2f} s); "
          f"check {Path(args.output) / 'landmarks.png'}")
    return 0


def add_photo_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "photo", help="a textured coarse face mesh from one photo (MediaPipe face mesh; optional extra)",
        description="Detect MediaPipe's 468 face landmarks in PHOTO, mesh them (face toward +z, +y up, mm), "
                    "Loop-subdivide and texture with the photo. Writes RAW_DIR/mesh.obj (+ .mtl, .png), "
                    "landmarks.png (the fit: open it) and photo.json; RAW_DIR then goes to `pbidr preprocess "
                    f"--input RAW_DIR`. Needs the photo extra: {INSTALL_HINT}.")
    p.add_argument("--input", "-i", "--image", dest="image", required=True, metavar="PHOTO",
                   help="face photo (JPEG, PNG, ...)")
    p.add_argument("--output", "-o", required=True, metavar="RAW_DIR",
                   help="folder to write (new or empty; see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace RAW_DIR when it is a previous `pbidr photo` output (atomically); a folder holding "
                        "anything else is never replaced")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N (checked; the landmarks are found on the CPU)")
    p.add_argument("--subdivide", type=nonneg_int, default=DEFAULT_SUBDIVIDE, metavar="N",
                   help=f"Loop subdivision steps, each x4 triangles (default {DEFAULT_SUBDIVIDE}: 898 -> 57,472)")
    p.add_argument("--interocular", type=finite_float, default=DEFAULT_INTEROCULAR_MM, metavar="MM",
                   help=f"distance between the eye centres in mm; sets the scale (default {DEFAULT_INTEROCULAR_MM:g})")
    p.set_defaults(func=cmd_photo)
    return p
