"""``pbidr bench batch``: the same subjects through ``pbidr batch``'s local engine and through Ray, in one run.

It (script/bench_batch.sh) writes --subjects built-in samples (seeds 0..N-1), then runs ``pbidr batch``
once per configuration, each as a fresh process into a fresh --out, so every engine pays its own start
(interpreter, imports, Ray's start and its workers' imports):

* ``local``: one subject after another in one process, torch on every core;
* ``ray`` with ``--cpus-per-job`` = all cores: one subject at a time in a Ray worker (Ray's pure overhead);
* ``ray`` with ``--cpus-per-job 1``: one subject per core at once, one torch thread each.

Reports wall seconds, subjects per hour and the ratio to ``local``, with the fp32 matmul rate of
--device (the subjects' device) measured in the same run. --gpus (a list of GPUs per subject) times the
Ray engine on a GPU machine, e.g. ``--gpus 1,0.5`` for one against two subjects per GPU."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pbidr.bench.common import check_conf, machine_info, machine_line, matmul_rate, write_report
from pbidr.commands.args import (output_file, positive_float, positive_float_list, positive_int, views_arg,
                                 work_folder)
from pbidr.errors import PbidrError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=work_folder, default="bench/batch",
                   help="samples and outputs go here; its output folders must not exist (default bench/batch)")
    p.add_argument("--subjects", type=positive_int, default=4, help="built-in samples, seeds 0..N-1 (default 4)")
    p.add_argument("--conf", default=None, metavar="FILE", help="train conf (default: pbidr batch's, confs/fast.conf)")
    p.add_argument("--iters", type=positive_int, default=150, help="training iterations (default 150)")
    p.add_argument("--res", type=positive_int, default=128, help="preprocess image size (default 128)")
    p.add_argument("--yaw", type=positive_int, default=5, help="preprocess views (default 5)")
    p.add_argument("--mc-resolution", type=positive_int, default=128, help="eval marching cubes (default 128)")
    p.add_argument("--eval-views", type=views_arg, default="1", help="eval views (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="conf overrides for train")
    p.add_argument("--gpus", type=positive_float_list, default=None,
                   help="GPU runs instead of the CPU ones: GPUs per subject, e.g. 1,0.5")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="repeat every engine, order reversed each round (default 1)")
    p.add_argument("--skip-local", action="store_true", help="only the Ray runs")
    p.add_argument("--cpus-per-gpu-job", type=positive_float, default=2.0, help="with --gpus: CPUs per subject (default 2)")
    p.add_argument("--json", type=output_file, default="bench/batch.json", help="results file (default bench/batch.json)")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no line per finished run")


def main(args: argparse.Namespace) -> int:
    from pbidr.training.conf import resolve_conf

    check_conf(args.conf, args.set, args.iters)  # what every `pbidr batch` run would refuse, refused once here
    args.conf = str(resolve_conf(args.conf, None))
    taken = [str(out) for out, _ in _runs(args) if out.exists()]
    if taken:
        raise PbidrError(f"--workdir {args.workdir}: {taken[0]} exists; use a fresh --workdir "
                         "(the benchmark never reuses outputs)")
    results = run(args)
    write_report(args.json, results)
    print(markdown(results))
    print(f"\nresults: {args.json}")
    return 0 if all(r["exit_code"] == 0 for r in results["runs"]) else 1


def _batch_cmd(inputs: Path, out: Path, args: argparse.Namespace, engine: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pbidr.commands", "batch", "--inputs", str(inputs), "--out", str(out),
           "--conf", args.conf, "--iters", str(args.iters), "--res", str(args.res), "--yaw", str(args.yaw),
           "--mc-resolution", str(args.mc_resolution), "--eval-views", args.eval_views, "--device", str(args.device),
           "--quiet", *engine]
    for item in args.set or []:
        cmd += ["--set", item]
    return cmd


def _engine_configs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, engine flags) of each engine setting measured: local unless --skip-local, then Ray with each
    --gpus share, or with all the cores for one subject and with one core each."""
    cores = os.cpu_count() or 1
    configs: list[tuple[str, list[str]]] = [] if args.skip_local else [("local", ["--engine", "local"])]
    if args.gpus:
        for g in (f"{share:g}" for share in args.gpus):
            configs.append((f"ray, {g} GPU per subject",
                            ["--engine", "ray", "--gpus-per-job", g, "--cpus-per-job", str(args.cpus_per_gpu_job)]))
    else:
        configs += [(f"ray, {cores} CPUs per subject (1 at a time)", ["--engine", "ray", "--cpus-per-job", str(cores)]),
                    (f"ray, 1 CPU per subject ({cores} at a time)", ["--engine", "ray", "--cpus-per-job", "1"])]
    return configs


def _runs(args: argparse.Namespace) -> list[tuple[Path, tuple[int, tuple[str, list[str]]]]]:
    """(output folder, (round, engine setting)) of every `pbidr batch` run, in the order they run: rounds
    alternate the order (ABC, CBA, ...) so that load from other jobs on a shared machine falls on every
    engine alike."""
    configs = _engine_configs(args)
    order = [(r, cfg) for r in range(args.rounds) for cfg in (configs if r % 2 == 0 else configs[::-1])]
    work = Path(args.workdir)
    return [(work / (f"out{rnd}_" + "".join(c if c.isalnum() else "_" for c in name)), (rnd, (name, engine)))
            for rnd, (name, engine) in order]
def _timed_batch(inputs: Path, out: Path, args: argparse.Namespace, engine: list[str]) -> dict:
    """One `pbidr batch` run into ``out``: its wall and CPU time, exit code and summary rows."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(_batch_cmd(inputs, out, args, engine), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the batch and the processes it reaped: the whole cost of the local engine, but not
    # of Ray's (its workers are not reaped into this tree), so JSON only, not in the table.
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    summary = list((out / "summary.csv").read_text().splitlines()[1:]) if (out / "summary.csv").exists() else []
    return {"args": engine, "exit_code": proc.returncode, "wall_s": wall, "cpu_s": cpu,
            "subjects_per_hour": 3600.0 * args.subjects / wall, "summary_rows": summary,
            "output_tail": proc.stdout[-2000:]}


def run(args: argparse.Namespace) -> dict:
    """Every `pbidr batch` run (--rounds of each engine setting) on the --subjects samples, timed; the
    matmul rate of --device before and after."""
    from pbidr.preprocess.sample import make_sample

    inputs = Path(args.workdir) / "inputs"
    for seed in range(args.subjects):
        if not (inputs / f"face{seed}" / "sample.json").is_file():
            make_sample(inputs / f"face{seed}", seed=seed)
    results = {"machine": machine_info(args.device), "date": time.strftime("%Y-%m-%d %H:%M"), "subjects": args.subjects,
               "settings": {k: getattr(args, k) for k in ("conf", "iters", "res", "yaw", "mc_resolution",
                                                          "eval_views", "device", "set")}}
    results["settings"]["device"] = str(args.device)  # a torch.device here; JSON holds its name
    results["machine"]["matmul_gflop_s"] = matmul_rate(device=args.device) / 1e9
    rows = []
    for out, (rnd, (name, engine)) in _runs(args):
        row = {"engine": name, "round": rnd} | _timed_batch(inputs, out, args, engine)
        rows.append(row)
        if args.progress:
            print(f"round {rnd}, {name}: {row['wall_s']:.1f} s, {row['cpu_s']:.1f} CPU s (exit {row['exit_code']})",
                  file=sys.stderr, flush=True)
    results["matmul_gflop_s_after"] = matmul_rate(device=args.device) / 1e9
    # the table reports each run and the median per engine, against the first engine's median
    names = [name for name, _ in _engine_configs(args)]
    medians = {name: statistics.median(r["wall_s"] for r in rows if r["engine"] == name) for name in names}
    base = medians[names[0]]
    results["median_wall_s"] = medians
    results["median_vs_first"] = {name: m / base for name, m in medians.items()}
    for row in rows:
        row["vs_first"] = row["wall_s"] / base
    results["runs"] = rows
    return results


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [machine_line(results["machine"], results["date"]) + ".",
             f"{results['subjects']} built-in samples (seeds 0..{results['subjects'] - 1}), conf {s['conf']} with "
             f"--iters {s['iters']}, preprocess --res {s['res']} --yaw {s['yaw']}, eval --mc-resolution "
             f"{s['mc_resolution']} --eval-views {s['eval_views']}" + (f", --set {' '.join(s['set'])}" if s["set"] else "")
             + "; each engine a fresh process into a fresh --out (wall time includes every start).", "",
             f"fp32 matmul after the runs: {results['matmul_gflop_s_after']:.0f} GFLOP/s.", "",
             f"| round | engine | wall s | subjects/hour | wall vs median of {next(iter(results['median_wall_s']))} "
             "| exit |", "|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['round']} | {r['engine']} | {r['wall_s']:.1f} | {r['subjects_per_hour']:.0f} | "
                     f"{r['vs_first']:.3f} | {r['exit_code']} |")
    lines += ["", "| engine | median wall s | median vs first |", "|---|---|---|"]
    for name, m in results["median_wall_s"].items():
        lines.append(f"| {name} | {m:.1f} | {results['median_vs_first'][name]:.3f} |")
    return "\n".join(lines)
