"""The view-rig arguments (``--yaw``, ``--res``, ``--front``, ...) shared by ``pbidr preprocess`` and
``pbidr batch``, and the :class:`~pbidr.geometry.cameras.Rig` they describe."""

from __future__ import annotations

import argparse
import math

from pbidr.commands.args import finite_float, nonneg_int, positive_int
from pbidr.geometry.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, DEFAULT_MARGIN, Rig


def _vec3(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"expected three finite numbers like '0,0,1', got {text!r}")
    return vals  # type: ignore[return-value]


def _angle(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 180.0:  # a sweep of -A..A degrees around the face
        raise argparse.ArgumentTypeError(f"expected 0..180 degrees, got {text}")
    return value


def _margin(text: str) -> float:
    value = finite_float(text)
    if value < 1.0:  # below 1 the object pokes out of the unit sphere the tracer searches
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def add_rig_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("view rig (as the original's data_process)")
    g.add_argument("--yaw", type=nonneg_int, default=17, help="number of yaw views (default 17)")
    g.add_argument("--yaw-angle", type=_angle, default=45.0, help="yaw sweep is -A..A degrees (default 45)")
    g.add_argument("--pitch", type=nonneg_int, default=0, help="number of pitch views at yaw 0 (default 0)")
    g.add_argument("--pitch-angle", type=_angle, default=30.0, help="pitch sweep is -A..A degrees (default 30)")
    g.add_argument("--res", type=positive_int, default=1024, help="image width = height in pixels (default 1024)")
    g.add_argument("--distance", type=finite_float, default=DEFAULT_DISTANCE,
                   help=f"camera distance in normalised units (default {DEFAULT_DISTANCE:g})")
    g.add_argument("--fov", type=finite_float, default=DEFAULT_FOV_DEG,
                   help=f"full field of view in degrees (default {DEFAULT_FOV_DEG:.2f}: frames the unit sphere)")
    g.add_argument("--front", type=_vec3, default=(0.0, 0.0, 1.0), help="direction the face looks (default 0,0,1)")
    g.add_argument("--up", type=_vec3, default=(0.0, 1.0, 0.0), help="up direction of the face (default 0,1,0)")
    g.add_argument("--margin", type=_margin, default=DEFAULT_MARGIN,
                   help=f"unit sphere = bounding sphere x margin, at least 1 (default {DEFAULT_MARGIN:g})")


def rig_from_args(args: argparse.Namespace) -> Rig:
    return Rig(yaw=args.yaw, yaw_angle=args.yaw_angle, pitch=args.pitch, pitch_angle=args.pitch_angle,
               res=args.res, distance=args.distance, fov=args.fov, front=tuple(args.front), up=tuple(args.up))
