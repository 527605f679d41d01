"""The ``pbidr`` command: one subcommand per stage (sample, photo, preprocess, train, eval, score, batch, bench)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pbidr.errors import PbidrError


def _vec3(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers like '0,0,1', got {text!r}")
    return vals  # type: ignore[return-value]


def add_rig_args(p: argparse.ArgumentParser) -> None:
    from pbidr.geometry.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, DEFAULT_MARGIN

    g = p.add_argument_group("view rig (as the original's data_process)")
    g.add_argument("--yaw", type=int, default=17, help="number of yaw views (default 17)")
    g.add_argument("--yaw-angle", type=float, default=45.0, help="yaw sweep is -A..A degrees (default 45)")
    g.add_argument("--pitch", type=int, default=0, help="number of pitch views at yaw 0 (default 0)")
    g.add_argument("--pitch-angle", type=float, default=30.0, help="pitch sweep is -A..A degrees (default 30)")
    g.add_argument("--res", type=int, default=1024, help="image width = height in pixels (default 1024)")
    g.add_argument("--distance", type=float, default=DEFAULT_DISTANCE,
                   help=f"camera distance in normalised units (default {DEFAULT_DISTANCE:g})")
    g.add_argument("--fov", type=float, default=DEFAULT_FOV_DEG,
                   help=f"full field of view in degrees (default {DEFAULT_FOV_DEG:.2f}: frames the unit sphere)")
    g.add_argument("--front", type=_vec3, default=(0.0, 0.0, 1.0), help="direction the face looks (default 0,0,1)")
    g.add_argument("--up", type=_vec3, default=(0.0, 1.0, 0.0), help="up direction of the face (default 0,1,0)")
    g.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help=f"unit sphere = bounding sphere x margin (default {DEFAULT_MARGIN:g})")


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

    info = make_sample(args.output, seed=args.seed, overwrite=args.overwrite)
    print(f"sample written to {Path(args.output)} ({info})" if args.verbose else f"sample written to {args.output}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from pbidr.preprocess.pipeline import preprocess

    meta = preprocess(args.input, args.output, rig_from_args(args), renderer=args.renderer,
                      margin=args.margin, device=args.device, progress=not args.quiet, overwrite=args.overwrite)
    t = meta["timings"]
    print(f"scan written to {args.output}: {meta['n_views']} views at {meta['image_size'][1]}x{meta['image_size'][0]} "
          f"({meta['renderer']}, render {t['render_s']:.2f} s, total {t['total_s']:.2f} s); contact sheet "
          f"{Path(args.output) / 'views.png'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pbidr.training.trainer import Trainer
    from pbidr.utils.device import pick_device

    overrides = {}
    if args.iters is not None:
        overrides["train.iters"] = args.iters
    if args.nepoch is not None:
        overrides.update({"train.nepoch": args.nepoch, "train.iters": 0})
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise PbidrError(f"--set {item}: expected KEY=VALUE, e.g. train.batch_size=1024")
        from pyhocon import ConfigFactory

        overrides[key.strip()] = ConfigFactory.parse_string(f"v = {value}")["v"]
    device = pick_device(args.device)
    trainer = Trainer(args.data, args.exp_dir, args.conf, overrides, device=device, resume=args.resume,
                      progress=not args.quiet, overwrite=args.overwrite)
    result = trainer.run()
    state = "interrupted" if result.interrupted else "finished"
    print(f"training {state} at step {result.step}/{result.total_steps} in {result.seconds:.1f} s "
          f"({result.s_per_iter:.3f} s/it, {result.rays_per_s:.0f} rays/s on {device}); run: {result.exp_dir}")
    return 130 if result.interrupted else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pbidr.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbidr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="write the built-in procedural face (coarse textured mesh + ground truth)")
    p.add_argument("--output", "-o", required=True, help="folder to write (new or empty; see --overwrite)")
    add_overwrite_arg(p, "sample")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("preprocess", help="render a textured mesh from a view rig into an IDR scan directory")
    p.add_argument("--input", "-i", required=True, help="mesh file, or folder holding mesh.obj/.ply/.glb/.gltf")
    p.add_argument("--output", "-o", required=True, help="scan directory to write (new or empty; see --overwrite)")
    add_overwrite_arg(p, "preprocess")
    p.add_argument("--renderer", default="embree", help="embree (default) or pytorch3d (optional, needs CUDA torch)")
    p.add_argument("--device", default="auto", help="device of the pytorch3d renderer: auto, cpu, cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_rig_args(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train", help="optimise the SDF and the PBIDR renderer on a scan directory")
    p.add_argument("--data", default=None, help="scan directory (pbidr preprocess); taken from the run when resuming")
    p.add_argument("--exp-dir", required=True, help="run directory; an existing run needs --resume")
    p.add_argument("--conf", default=None, help="HOCON conf (default: the original's settings = confs/test.conf)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iters", type=int, default=None, help="total iterations (overrides the conf)")
    g.add_argument("--nepoch", type=int, default=None, help="total epochs, one epoch = one batch per view")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    g2 = p.add_mutually_exclusive_group()
    g2.add_argument("--resume", action="store_true",
                    help="continue the run in --exp-dir from its latest good checkpoint (step 0 if it has none)")
    g2.add_argument("--overwrite", action="store_true",
                    help="start the run in --exp-dir again from scratch (only a `pbidr train` run is replaced)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides train.seed)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any conf key, e.g. train.batch_size=512")
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

    p = sub.add_parser("bench", help="benchmarks (see script/benchmark.sh)")
    p.add_argument("what", choices=["render", "all"],
                   help="render: 17 views at 1024^2 of the built-in sample; all: every section (script/benchmark.sh)")
    p.add_argument("--quick", action="store_true", help="with all: shrink every size (about a minute)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--repeat", type=int, default=3, help="runs; the median is reported (default 3)")
    p.add_argument("--res", type=int, default=1024)
    p.add_argument("--views", type=int, default=17)
    p.add_argument("--renderer", default="embree")
    p.add_argument("--workdir", default=None, help="where the sample is written (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the results to this JSON file (all: bench/results.json)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
