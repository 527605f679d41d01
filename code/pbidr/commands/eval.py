"""``pbidr eval``: a trained run -> EXP_DIR/eval/ (the work is :func:`pbidr.evaluation.run_eval.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pbidr.commands.args import checkpoint_arg, nonneg_float, positive_float, positive_int, views_arg
from pbidr.evaluation.run_eval import DEFAULT_BAND, DEFAULT_CHUNK, EVAL_DIR, RENDERERS, evaluate

# scan_units is imported when the command runs, as the other handlers import their stage's modules:
# building the parser (every call, `pbidr --help` too) needs only the flags and run_eval's defaults.


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="detailed meshes, marching cubes, UV maps, renders and metrics of a trained run",
        description="Evaluate a run of `pbidr train` into EXP_DIR/eval/ (replaced as a whole). Meshes are in "
                    "the input mesh's frame and units. Open eval/compare.png first.")
    p.add_argument("--input", "-i", "--exp-dir", dest="exp_dir", required=True, metavar="DIR",
                   help="run directory of `pbidr train` (the eval goes to DIR/eval/)")
    p.add_argument("--checkpoint", type=checkpoint_arg, default="latest", metavar="latest|STEP",
                   help="latest (default) or a step number")
    p.add_argument("--mc-resolution", type=positive_int, default=512, metavar="N",
                   help="marching-cubes cells along the longest side of the face's box (default 512; any integer)")
    p.add_argument("--views", type=views_arg, default="default", metavar="default|all|I,J,K",
                   help="views to render: default = the frontal view and the two extreme yaws of the scan's rig "
                        "(3 views), all, or 1-based numbers like 1,9,17")
    p.add_argument("--renderer", choices=RENDERERS, default="mesh",
                   help="decomposition renders: mesh (default) = Embree hits on detailed_subdivided shaded by the "
                        "model's networks, seconds per view; sdf = sphere-tracing the SDF per pixel, as the paper "
                        "(20-50 s per 1024^2 view on 2 CPU cores)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--chunk", type=positive_int, default=DEFAULT_CHUNK, metavar="N",
                   help=f"points per SDF query in marching cubes and displacement (memory knob, "
                        f"default {DEFAULT_CHUNK})")
    p.add_argument("--render-chunk", type=positive_int, default=None, metavar="N",
                   help="hit points per shading call (mesh renderer) or rays per chunk (sdf renderer); "
                        "memory knob (default: the conf's train.render_chunk)")
    p.add_argument("--no-rendering", action="store_true", help="skip the network renders, contact sheet and PSNR")
    p.add_argument("--band", type=positive_float, default=None, metavar="MM",
                   help=f"marching-cubes band around the coarse mesh in world units (default: 1.25 x the largest "
                        f"measured displacement + 2 voxels, at least {DEFAULT_BAND:g} mm or 2.5%% of the face's "
                        "radius, whichever is smaller)")
    p.add_argument("--lipschitz", type=nonneg_float, default=1.5, metavar="L",
                   help="marching cubes skips blocks where |sdf| > L x half their diagonal (default 1.5; 0: off, "
                        "for an SDF far from eikonal)")
    p.add_argument("--data", default=None, metavar="SCAN_DIR",
                   help="scan directory (default: the run's, from run.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR/eval when it holds an earlier eval (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)
    return p


def _mm(value: float, signed: bool = False) -> str:
    """A length in mm to 0.1 um (facial detail is 0.01-1 mm), e.g. +0.0123 mm."""
    return f"{value:+.4f} mm" if signed else f"{value:.4f} mm"


def cmd_eval(args: argparse.Namespace) -> int:
    m = evaluate(args.exp_dir, checkpoint=args.checkpoint, mc_resolution=args.mc_resolution, views=args.views,
                 device=args.device, chunk=args.chunk, eval_rendering=not args.no_rendering, progress=not args.quiet,
                 band=args.band, render_chunk=args.render_chunk, scan_dir=args.data,
                 lipschitz=args.lipschitz if args.lipschitz > 0 else None, overwrite=args.overwrite,
                 renderer=args.renderer)
    from pbidr.preprocess.units import scan_units

    out = Path(args.exp_dir) / EVAL_DIR
    d = m["displacement"]["detailed_subdivided"]
    unit, mm = scan_units(m["scan_dir"])  # the world frame is in the scan's units; people read millimetres
    lines = [f"eval of step {m['step']} written to {out} in {m['timings']['total_s']:.1f} s",
             f"  displacement: mean {_mm(d['mean'] * mm, True)}, std {_mm(d['std'] * mm)}, range "
             f"{_mm(d['min'] * mm, True)} .. {_mm(d['max'] * mm, True)}"
             + ("" if unit == "mm" else f" (the scan is in {unit}: x {mm:g})")]
    mc = m["marching_cubes"]
    if "error" not in mc:
        lines.append(f"  marching cubes {mc['resolution']}: {mc['n_faces']} faces, {mc['n_sdf_evals']:,} SDF evals "
                     f"({mc['evals_over_dense']:.2%} of dense) in {mc['seconds']:.1f} s")
    r = m["rendering"]
    if "psnr_mean" in r:
        lines.append(f"  masked PSNR: mean {r['psnr_mean']:.2f} dB over {len(r['views'])} views")
    def num(x, fmt: str) -> str:  # metrics.json writes NaN as "nan"
        return format(x, fmt) if isinstance(x, (int, float)) else str(x)

    for key in ("score", "score_dense"):
        if key in m:
            sc = m[key]
            lines.append(f"  score of {sc['mesh']} vs the sample's truth: normal-error ratio "
                         f"{num(sc['normal_error_ratio'], '.3f')} (< 1 beats the coarse mesh; the truth at its "
                         f"vertices: {num(sc['ceiling_ratio'], '.3f')}), recovered fraction "
                         f"{num(sc['recovered_fraction'], '.2f')}, displacement correlation "
                         f"{num(sc['displacement_correlation'], '.3f')}, RMS {num(sc['displacement_rms_mm'], '.3f')} mm, "
                         f"albedo leak {num(sc['albedo_leak'], '.2f')}")
    for note in m["notes"]:
        lines.append(f"  note: {note}")
    lines.append(f"  open {out / 'compare.png'} first")
    print("\n".join(lines))
    return 0
