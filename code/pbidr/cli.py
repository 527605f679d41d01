"""The ``pbidr`` command: one subcommand per stage (sample, photo, preprocess, train, eval, score, batch, bench)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pbidr import __version__
from pbidr.errors import PbidrError
from pbidr.commands.args import (OneLineParser, add_device_arg, finite_float, nonneg_int, positive_int)


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
    from pbidr.geometry.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, DEFAULT_MARGIN

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


def rig_from_args(args: argparse.Namespace):
    from pbidr.geometry.cameras import Rig

    return Rig(yaw=args.yaw, yaw_angle=args.yaw_angle, pitch=args.pitch, pitch_angle=args.pitch_angle,
               res=args.res, distance=args.distance, fov=args.fov, front=tuple(args.front), up=tuple(args.up))


def add_overwrite_arg(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace the output when it is a previous `pbidr {stage}` output (atomically); "
                        "a folder holding anything else is never replaced")


def cmd_sample(args: argparse.Namespace) -> int:
    from pbidr.preprocess.sample import make_sample
    from pbidr.utils.device import pick_device

    pick_device(args.device)  # checked like every stage's, though the sample is made with numpy
    info = make_sample(args.output, seed=args.seed, overwrite=args.overwrite)
    print(f"sample written to {Path(args.output)} ({info})" if args.verbose else f"sample written to {args.output}")
    return 0


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


def train_overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    """(overrides, labels) from --iters / --nepoch / --seed and --set; a key given both ways is an error."""
    from pbidr.training.conf import parse_set

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


def cmd_train(args: argparse.Namespace) -> int:
    from pbidr.training.conf import load_conf, resolve_conf
    from pbidr.training.trainer import Trainer
    from pbidr.utils.device import pick_device

    # everything the command line says is checked before the scan is read
    overrides, labels = train_overrides(args)
    conf_path = resolve_conf(args.conf, args.preset)
    load_conf(conf_path, overrides, labels)
    device = pick_device(args.device)
    trainer = Trainer(args.data, args.exp_dir, conf_path, overrides, device=device, resume=args.resume,
                      progress=not args.quiet, overwrite=args.overwrite)
    result = trainer.run()
    state = "interrupted" if result.interrupted else "finished"
    print(f"training {state} at step {result.step}/{result.total_steps} in {result.seconds:.1f} s "
          f"({result.s_per_iter:.3f} s/it, {result.rays_per_s:.0f} rays/s on {device}); run: {result.exp_dir}")
    return 130 if result.interrupted else 0


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


_DESCRIPTIONS = {
    "sample": "Write the built-in procedural face: a coarse textured mesh (mesh.obj/.mtl/.png, millimetres, face "
              "toward +z) and its ground truth (gt_detailed.obj, displacements, albedo marks) for `pbidr score`.",
    "preprocess": "Render a textured mesh (OBJ+MTL+texture, PLY with vertex colours, or glTF) unlit from a view rig "
                  "into an IDR-format scan directory (image/, mask/, cameras.npz, mesh.obj, views.png, meta.json).",
    "train": "Fit the PBIDR model (SDF + diffuse x albedo + specular) to a scan directory. The default conf is the "
             "detail mode (confs/fast.conf, CPU-sized); the paper's settings are --preset paper "
             "(= --conf confs/test.conf, for a GPU). The resolved conf is saved as EXP_DIR/run.conf.",
}


def build_parser() -> argparse.ArgumentParser:
    from pbidr.training.conf import add_conf_args

    parser = OneLineParser(prog="pbidr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pbidr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="write the built-in procedural face (coarse textured mesh + ground truth)",
                       description=_DESCRIPTIONS["sample"])
    p.add_argument("--output", "-o", required=True, help="folder to write (new or empty; see --overwrite)")
    add_overwrite_arg(p, "sample")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    add_device_arg(p, " (checked; the sample is made on the CPU)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("preprocess", help="render a textured mesh from a view rig into an IDR scan directory",
                       description=_DESCRIPTIONS["preprocess"])
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

    p = sub.add_parser("train", help="optimise the SDF and the PBIDR renderer on a scan directory",
                       description=_DESCRIPTIONS["train"])
    p.add_argument("--input", "-i", "--data", dest="data", default=None, metavar="SCAN_DIR",
                   help="scan directory (pbidr preprocess); taken from the run when resuming")
    p.add_argument("--output", "-o", "--exp-dir", dest="exp_dir", required=True, metavar="EXP_DIR",
                   help="run directory; an existing run needs --resume or --overwrite")
    add_conf_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iters", type=positive_int, default=None,
                   help="total iterations (replaces the conf's; not with --set train.iters)")
    g.add_argument("--nepoch", type=positive_int, default=None,
                   help="total epochs, one epoch = one batch per view (not with --set train.nepoch)")
    add_device_arg(p)
    g2 = p.add_mutually_exclusive_group()
    g2.add_argument("--resume", action="store_true",
                    help="continue the run in EXP_DIR from its latest good checkpoint (step 0 if it has none)")
    g2.add_argument("--overwrite", action="store_true",
                    help="start the run in EXP_DIR again from scratch (only a `pbidr train` run is replaced)")
    p.add_argument("--seed", type=nonneg_int, default=None, help="random seed (replaces train.seed)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any conf key, e.g. train.batch_size=512 or model.ray_tracer.mode=mesh (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    from pbidr.evaluation.run_eval import add_eval_parser
    from pbidr.evaluation.score import add_score_parser

    add_eval_parser(sub)
    add_score_parser(sub)
    from pbidr.photo.face_mesh import add_photo_parser

    add_photo_parser(sub)
    from pbidr.batch.command import add_batch_parser

    add_batch_parser(sub)

    p = sub.add_parser("bench", help="benchmarks (see script/benchmark.sh)",
                       description="Benchmarks on the built-in sample. render: the preprocess renderer; all: every "
                                   "section of BENCHMARKS.md (script/benchmark.sh).")
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


if __name__ == "__main__":
    sys.exit(main())
