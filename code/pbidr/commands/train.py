"""``pbidr train``: fit the PBIDR model to a scan directory."""

from __future__ import annotations

import argparse

from pbidr.commands.args import add_device_arg, nonneg_int, positive_int
from pbidr.commands.conf import add_conf_args, train_overrides
from pbidr.errors import PbidrError
from pbidr.training.conf import describe_conf, load_conf, resolve_conf

# The handler imports the stage's implementation when the command runs: building the parser (every
# call, `pbidr --help` too) needs only the flags, and stays light.


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="optimise the SDF and the PBIDR renderer on a scan directory",
        description="Fit the PBIDR model (SDF + diffuse x albedo + specular) to a scan directory. The default conf "
                    "is the detail mode (confs/fast.conf, CPU-sized); the paper's settings are --preset paper "
                    "(= --conf confs/test.conf, for a GPU). The resolved conf is saved as EXP_DIR/run.conf.")
    p.add_argument("--input", "-i", "--data", dest="data", default=None, metavar="SCAN_DIR",
                   help="scan directory (pbidr preprocess); taken from the run when resuming")
    p.add_argument("--output", "-o", "--exp-dir", dest="exp_dir", default=None, metavar="EXP_DIR",
                   help="run directory (required unless --print-conf); an existing run needs --resume or --overwrite")
    add_conf_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iters", type=positive_int, default=None,
                   help="total iterations (replaces the conf's; not with --set train.iters)")
    g.add_argument("--nepoch", type=positive_int, default=None,
                   help="total epochs, one epoch = one batch per view (not with --set train.nepoch)")
    add_device_arg(p)
    g2 = p.add_mutually_exclusive_group()
    g2.add_argument("--resume", action="store_true",
                    help="continue the run in EXP_DIR from its latest good checkpoint (step 0 if it has none), with "
                         "its own conf: a --conf, --preset or --set that changes it is refused, except the run's "
                         "length and bookkeeping (train.iters, nepoch, time_budget_s, checkpoint and plot settings)")
    g2.add_argument("--overwrite", action="store_true",
                    help="start the run in EXP_DIR again from scratch (only a `pbidr train` run is replaced)")
    p.add_argument("--seed", type=nonneg_int, default=None, help="random seed (replaces train.seed)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set any conf key, e.g. train.batch_size=512 or model.ray_tracer.mode=mesh (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--print-conf", action="store_true",
                   help="print the resolved conf (--conf / --preset with the overrides) as HOCON, every key with "
                        "its doc and, where it differs, its default; then exit (needs no --input or --output)")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from pbidr.training.trainer import Trainer
    from pbidr.utils.device import pick_device

    # everything the command line says is checked before the scan is read
    overrides, labels = train_overrides(args)
    conf_path = resolve_conf(args.conf, args.preset)
    conf = load_conf(conf_path, overrides, labels)
    if args.print_conf:
        print(f"# {conf_path}{' with ' + ', '.join(labels[k] for k in overrides) if overrides else ''}")
        print(describe_conf(conf), end="")
        return 0
    if args.exp_dir is None:
        raise PbidrError("--output/-o EXP_DIR is required (the run directory)")
    device = pick_device(args.device)
    # without --conf / --preset, a resumed run keeps its own conf (with --set checked against it)
    trainer = Trainer(args.data, args.exp_dir, conf_path, overrides, device=device, resume=args.resume,
                      progress=not args.quiet, overwrite=args.overwrite,
                      conf_given=args.conf is not None or args.preset is not None)
    result = trainer.run()
    state = "interrupted" if result.interrupted else "finished"
    print(f"training {state} at step {result.step}/{result.total_steps} in {result.seconds:.1f} s "
          f"({result.s_per_iter:.3f} s/it, {result.rays_per_s:.0f} rays/s on {device}); run: {result.exp_dir}")
    return 130 if result.interrupted else 0
