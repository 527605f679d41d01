"""``pbidr batch``: the command line, the settings the subjects run with, and the summary at the end.

The batch itself (subjects, stages, engines, the summary files) lives in :mod:`pbidr.batch`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pbidr.batch.state import STAGES, check_settings
from pbidr.commands.args import nonneg_float, nonneg_int, positive_int, views_arg
from pbidr.commands.conf import add_conf_args, train_overrides
from pbidr.commands.rig import add_rig_args, rig_from_args
from pbidr.errors import PbidrError
from pbidr.training.conf import load_conf, resolve_conf

# The handler imports the batch's implementation (engines, stages, summary) when the command runs:
# building the parser (every call, `pbidr --help` too) needs only the flags, and stays light.


def _stages(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(STAGES)}, got {text!r}")
    return tuple(s for s in STAGES if s in names)


def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "batch", help="many subjects through preprocess, train and eval; resumable; locally or on Ray",
        description="Run every subject of --input (subfolders holding mesh.*, mesh files, or the lines of a list "
                    "file) through the stages into --output/subjects/ID/. Rerunning the same command finishes only "
                    "what is missing; a failed subject does not stop the others (exit code 1 if any failed). Writes "
                    "--output/summary.csv, summary.md and overview.png. See docs/batch.md.")
    p.add_argument("--input", "-i", "--inputs", dest="inputs", required=True, metavar="DIR_OR_LIST",
                   help="folder of subjects (subfolders with mesh.*, or mesh files), or a text file of paths")
    p.add_argument("--output", "-o", "--out", dest="out", required=True, metavar="DIR",
                   help="output folder (on a cluster: a path every node sees)")
    add_conf_args(p, "train ")
    p.add_argument("--iters", type=positive_int, default=None,
                   help="training iterations (replaces the conf's; not with --set train.iters)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set any conf key (repeatable)")
    p.add_argument("--stages", type=_stages, default=STAGES, help="comma-separated (default preprocess,train,eval)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: one subject after another in this process; ray: one Ray task per subject")
    p.add_argument("--address", default=None, help="ray: address of a running Ray cluster (default: start a local Ray)")
    p.add_argument("--cpus-per-job", type=nonneg_float, default=None,
                   help="ray: CPUs per subject (default 1); also its torch threads")
    p.add_argument("--gpus-per-job", type=nonneg_float, default=None,
                   help="ray: GPUs per subject, fractions share a GPU (0.5: two subjects per GPU; default 0)")
    p.add_argument("--max-parallel", type=positive_int, default=None, help="ray: at most this many subjects at once "
                   "(default: as many as the resources allow)")
    p.add_argument("--retries", type=nonneg_int, default=0, help="retries of a subject after a transient failure (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--renderer", choices=["embree", "pytorch3d"], default="embree",
                   help="preprocess renderer: embree (default) or pytorch3d")
    p.add_argument("--units", choices=["mm", "cm", "m"], default=None,
                   help="the meshes' length unit (as pbidr preprocess --units; default: mm, checked)")
    p.add_argument("--mc-resolution", type=positive_int, default=512, help="eval marching-cubes resolution (default 512)")
    p.add_argument("--views", "--eval-views", dest="eval_views", type=views_arg, default="default",
                   metavar="default|all|I,J,K",
                   help="eval views: default (the frontal view and the extreme yaws, as pbidr eval), all, or "
                        "1-based numbers like 1,9,17")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    add_rig_args(p)
    p.set_defaults(func=cmd_batch)
    return p


def settings_from_args(args: argparse.Namespace):
    from pbidr.batch.stages import BatchSettings

    overrides, labels = train_overrides(args)  # --iters and --set of one key is an error, as in pbidr train
    conf = resolve_conf(args.conf, args.preset)
    load_conf(conf, overrides, labels)  # a bad conf or --set fails before any subject starts
    items = list(args.set)
    if args.iters is not None:
        items.append(f"train.iters={args.iters}")
    cpus = 1.0 if args.cpus_per_job is None else args.cpus_per_job  # --cpus-per-job's default
    threads = max(1, round(cpus)) if args.engine == "ray" else None
    return BatchSettings(out=Path(args.out).resolve(), stages=args.stages, conf=str(conf), overrides=tuple(items),
                         rig=rig_from_args(args), margin=args.margin, renderer=args.renderer, device=args.device,
                         mc_resolution=args.mc_resolution, eval_views=args.eval_views, threads=threads,
                         units=args.units)


def _check_engine_args(args: argparse.Namespace) -> None:
    """The engine's options checked (and their defaults filled in) before anything is written."""
    from pbidr.batch.engines import import_ray
    from pbidr.utils.device import pick_device

    if args.engine != "ray":  # an option that would be ignored is an error, not a silent default
        given = [f for f, v in (("--address", args.address), ("--cpus-per-job", args.cpus_per_job),
                                ("--gpus-per-job", args.gpus_per_job), ("--max-parallel", args.max_parallel))
                 if v is not None]
        if given:
            raise PbidrError(f"{', '.join(given)}: apply to --engine ray only")
    args.cpus_per_job = 1.0 if args.cpus_per_job is None else args.cpus_per_job
    args.gpus_per_job = 0.0 if args.gpus_per_job is None else args.gpus_per_job
    if args.engine == "local":
        pick_device(args.device)  # on Ray the device is the worker's, checked there
    if args.engine == "ray":
        if args.cpus_per_job < 0 or args.gpus_per_job < 0 or args.cpus_per_job + args.gpus_per_job == 0:
            raise PbidrError("--cpus-per-job / --gpus-per-job: must be non-negative, not both 0")
        if args.gpus_per_job > 1 and args.gpus_per_job != int(args.gpus_per_job):
            raise PbidrError(f"--gpus-per-job {args.gpus_per_job:g}: above 1 it must be a whole number (Ray's rule)")
        if args.max_parallel is not None and args.max_parallel < 1:
            raise PbidrError(f"--max-parallel {args.max_parallel}: must be at least 1")
        import_ray()  # fail before anything is written when Ray is missing


def _run_engine(args: argparse.Namespace, subjects: list, settings, progress) -> bool:
    """Every subject through the chosen engine (each records its own state, which the summary reads);
    whether Ctrl-C interrupted the batch."""
    from pbidr.batch.engines import run_local, run_ray

    try:
        if args.engine == "local":
            run_local(subjects, settings, args.retries, progress)
        else:
            run_ray(subjects, settings, args.retries, progress, address=args.address,
                    cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job, max_parallel=args.max_parallel)
    except KeyboardInterrupt:
        return True
    finally:
        progress.close()
    return False


def _report(out: Path, subjects: list, header: dict, wall: float, interrupted: bool) -> int:
    """The final summary and the closing lines; the exit code (130 interrupted, 1 a subject failed)."""
    from pbidr.batch.summary import write_summary

    header["wall time of the last run"] = f"{wall:.1f} s" + (" (interrupted)" if interrupted else "")
    rows = write_summary(out, subjects, header)
    failed = [r for r in rows if r["status"] == "failed"]
    done = sum(r["status"] == "done" for r in rows)
    print(f"batch {'interrupted' if interrupted else 'finished'} in {wall:.1f} s: {done} done, {len(failed)} failed of "
          f"{len(rows)}; summary {out / 'summary.md'}, overview {out / 'overview.png'}")
    for r in failed:
        print(f"  {r['subject']}: {r['error']}")
    if interrupted:
        return 130
    return 1 if failed else 0


def cmd_batch(args: argparse.Namespace) -> int:
    from pbidr.batch.engines import Progress
    from pbidr.batch.subjects import find_subjects
    from pbidr.batch.summary import write_summary

    _check_engine_args(args)
    settings = settings_from_args(args)
    out = settings.out
    subjects = find_subjects(args.inputs, out)
    settings.rig.validate()
    check_settings(out, settings.identity())

    t0 = time.perf_counter()
    header = {"inputs": str(Path(args.inputs).resolve()), "engine": args.engine, "stages": ",".join(settings.stages)}
    if args.engine == "ray":
        header["resources per subject"] = f"{args.cpus_per_job:g} CPU, {args.gpus_per_job:g} GPU"

    def refresh_summary(_outcome=None) -> None:  # after every subject: a killed batch still has a summary
        write_summary(out, subjects, header, overview=False)

    progress = Progress(len(subjects), enabled=not args.quiet, on_finish=refresh_summary)
    interrupted = _run_engine(args, subjects, settings, progress)
    return _report(out, subjects, header, time.perf_counter() - t0, interrupted)
