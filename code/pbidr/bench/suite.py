"""``pbidr bench all``: every section of BENCHMARKS.md in one process (script/benchmark.sh): the demo
pipeline end to end, render, training speed with FLOPs against this machine's matmul rate, marching
cubes, and the quality of the end-to-end run. Writes the results as JSON and prints them as the
markdown tables of BENCHMARKS.md; --quick shrinks every size (about a minute)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pbidr.bench.common import cell, machine_info, machine_line, matmul_rate, write_report
from pbidr.commands.args import output_file

# The sizes of every section: FULL is what BENCHMARKS.md reports, QUICK a smoke run (CI, the tests).
FULL = {"grid": None, "texture": 1024, "views": 17, "res": 1024, "render_repeat": 3, "train_iters": None,
        "mc_res": 512, "eval_views": "1,5,9,13,17", "speed_iters": 5, "speed_warmup": 2, "test_conf_iters": 2}
QUICK = {"grid": (60, 80), "texture": 256, "views": 5, "res": 128, "render_repeat": 1, "train_iters": 10,
         "mc_res": 64, "eval_views": "3", "speed_iters": 1, "speed_warmup": 1, "test_conf_iters": 1,
         "test_conf_batch": 256}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="shrink every size (about a minute)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", type=output_file, default="bench/results.json",
                   help="write the results to this JSON file (default bench/results.json; its work folder beside it)")


def main(args: argparse.Namespace) -> int:
    out = Path(args.json)
    results = run_all(out, quick=args.quick, progress=not args.quiet, device=args.device)
    print(markdown(results))
    print(f"results: {out}")
    return 0


def run_all(out_json: Path, quick: bool = False, progress: bool = True, device="cpu") -> dict:
    """Every section, in one process: end-to-end demo pipeline, render, train speed, eval, quality; the
    training, eval and matmul probe on ``device``. The work folder lies beside ``out_json``."""
    import torch

    from pbidr.bench import sections

    device = torch.device(device)
    size = QUICK if quick else FULL
    repo = Path(__file__).resolve().parents[3]
    fast_conf, test_conf = repo / "confs" / "fast_mlp.conf", repo / "confs" / "test.conf"
    work = out_json.parent / ("work_quick" if quick else "work")
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"quick": quick, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_info(device)}
    results["machine"]["matmul_gflop_s"] = matmul_rate(device=device) / 1e9
    log = (lambda msg: print(f"[bench] {msg}", flush=True)) if progress else (lambda msg: None)

    e2e = sections.end_to_end(work, size, fast_conf, progress, log, device)
    results["e2e"] = e2e.seconds
    log("render")
    results["render"] = sections.bench_render(work, views=size["views"], res=size["res"],
                                              repeat=size["render_repeat"], device=device)
    results["eval"] = sections.eval_section(e2e.metrics, size["mc_res"])
    log("train speed")
    results["train_speed"] = sections.train_speed_section(work / "scan", work, size, fast_conf, test_conf,
                                                          results["machine"]["matmul_gflop_s"], log, device)
    log("quality")
    results["quality"] = sections.quality_section(e2e)
    write_report(out_json, results)
    return results


def markdown(results: dict) -> str:
    """The results as the markdown tables of BENCHMARKS.md."""
    lines = [machine_line(results["machine"], results["date"]) + (" (--quick sizes)" if results["quick"] else ""), ""]
    e = results["e2e"]
    lines += ["| stage | seconds |", "|---|---|"]
    for k in ("sample_s", "preprocess_s", "train_s", "eval_s", "total_s"):
        lines.append(f"| {k[:-2]} | {e[k]:.1f} |")
    r = results["render"]
    lines += ["", "| render | views | res | median s (render only) | median s (whole preprocess) | target |",
              "|---|---|---|---|---|---|",
              f"| {r['renderer']} | {r['views']} | {r['res']} | {r['render_s_median']:.2f} | "
              f"{r['preprocess_s_median']:.2f} | <= {r['target_s']:.0f} s |"]
    lines += _speed_lines(results["train_speed"])
    ev = results["eval"]
    lines += ["", "| eval | MC res | MC s | SDF evals | dense evals | saving | eval peak RSS MB | eval s |",
              "|---|---|---|---|---|---|---|---|",
              f"| fast_mlp.conf run | {ev['mc_resolution']} | {cell(ev['mc_s'])} | {ev['mc_sdf_evals']} | "
              f"{ev['mc_dense_evals']} | {cell(ev['mc_eval_saving'], '.0f')}x | {cell(ev['eval_peak_rss_mb'], '.0f')} | "
              f"{cell(ev['eval_total_s'])} |"]
    lines += _quality_lines(results["quality"])
    return "\n".join(lines) + "\n"


def _speed_lines(train_speed: list[dict]) -> list[str]:
    """The training-speed table, then each conf's mesh-guided / faithful tracer speed-up."""
    lines = ["", "| train conf | tracer | batch | s/it | rays/s | SDF evals/ray | GFLOP/it | GFLOP/s | % of matmul |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in train_speed:
        lines.append(f"| {t['conf']} | {t['mode']} | {t['batch_size']} | {t['s_per_iter']:.3f} | {t['rays_per_s']:.0f} | "
                     f"{t['sdf_evals_per_ray']:.1f} | {t['gflop_per_iter']:.1f} | {t['achieved_gflop_s']:.1f} | "
                     f"{100 * t['flop_rate_vs_matmul']:.1f} |")
    by = {(t["conf"], t["mode"]): t for t in train_speed}
    for conf in sorted({t["conf"] for t in train_speed}):
        if (conf, "idr") in by and (conf, "mesh") in by:
            lines.append(f"\n{conf}: mesh-guided / faithful rays/s = "
                         f"{by[(conf, 'mesh')]['rays_per_s'] / by[(conf, 'idr')]['rays_per_s']:.1f}x")
    return lines


def _quality_lines(q: dict) -> list[str]:
    lines = ["", f"Quality after {q['train_iters']} iterations of confs/fast_mlp.conf (masked PSNR "
             f"{cell(q['psnr_mean'], '.2f')} dB):", "",
             "| mesh | normal-error ratio (vs coarse) | mean / median normal error deg | displacement corr. | "
             "RMS mm | albedo leak |", "|---|---|---|---|---|---|"]
    for name in ("detailed.obj", "detailed_subdivided.obj"):
        s = q[name]
        lines.append(f"| {name} | {cell(s['normal_error_ratio'], '.3f')} | {cell(s['normal_error_deg']['mean'], '.2f')} / "
                     f"{cell(s['normal_error_deg']['median'], '.2f')} (coarse {cell(s['coarse_normal_error_deg']['mean'], '.2f')}) | "
                     f"{cell(s['displacement_correlation'], '.3f')} | {cell(s['displacement_rms_mm'], '.3f')} | "
                     f"{cell(s['albedo_leak'], '.2f')} |")
    return lines
