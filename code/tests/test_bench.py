"""`pbidr bench VERB`: `script/benchmark.sh --quick` (pbidr bench all --quick) runs and writes every key;
every verb has its --help, takes --device and refuses a bad one in one line, and stays light to parse."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pbidr.bench.suite import markdown, run_all
from pbidr.commands import main as cli
from pbidr.commands.bench import VERBS

CODE = Path(__file__).resolve().parents[1]
# what a verb needs besides --device to pass its checks (the rest has defaults)
REQUIRED = {"quality": ["-o", "{tmp}/q"], "texel": ["-o", "{tmp}/t"], "matrix": ["-o", "{tmp}/m"]}


def test_quick_benchmark_writes_every_key(tmp_path):
    out = tmp_path / "results.json"
    results = run_all(out, quick=True, progress=False)
    saved = json.loads(out.read_text())
    for key in ("machine", "e2e", "render", "eval", "train_speed", "quality", "date", "quick"):
        assert key in saved, key
    assert saved["machine"]["matmul_gflop_s"] > 0 and saved["machine"]["device"] == "cpu"
    for key in ("sample_s", "preprocess_s", "train_s", "eval_s", "total_s"):
        assert saved["e2e"][key] > 0
    assert saved["render"]["render_s_median"] > 0
    assert {(r["conf"], r["mode"]) for r in saved["train_speed"]} == {
        ("fast_mlp.conf", "idr"), ("fast_mlp.conf", "mesh"), ("test.conf", "idr"), ("test.conf", "mesh")}
    for row in saved["train_speed"]:
        assert row["s_per_iter"] > 0 and row["gflop_per_iter"] > 0 and 0 < row["flop_rate_vs_matmul"] < 2
    assert saved["eval"]["mc_sdf_evals"] and saved["eval"]["mc_dense_evals"] >= saved["eval"]["mc_sdf_evals"]
    for name in ("detailed.obj", "detailed_subdivided.obj"):
        assert "normal_error_ratio" in saved["quality"][name]
    table = markdown(results)
    assert "| fast_mlp.conf | mesh |" in table and "normal-error ratio" in table


def test_line_chart_draws_each_series_in_its_colour_on_a_log_axis():
    import numpy as np

    from pbidr.utils.plot import COLOURS, line_chart

    img = line_chart({"a": [(3, 0.4), (30, 0.5)], "b": [(300, 0.0), (600, 0.02)]}, "seconds", log_x=True,
                     refs=[(0.5, "target")])
    assert img.shape == (520, 900, 3) and img.dtype == np.uint8
    for colour in COLOURS[:2]:
        hit = np.all(img == np.array(colour, np.uint8), axis=-1)
        assert hit.sum() > 50, colour  # the polyline and its markers
    plot = img[:, :900 - 230]  # left of the legend
    a_cols = np.flatnonzero(np.all(plot == np.array(COLOURS[0], np.uint8), axis=-1).any(axis=0))
    b_cols = np.flatnonzero(np.all(plot == np.array(COLOURS[1], np.uint8), axis=-1).any(axis=0))
    assert a_cols.max() < b_cols.min()  # 3-30 s lies left of 300-600 s
    assert line_chart({}, "x").min() == 255  # nothing to draw: a blank chart, no error


def test_texel_bench_reference_points_from_a_spec_and_from_a_quality_report(tmp_path):
    import argparse

    from pbidr.bench.texel import _reference, reference_points

    results = [{"seed": 0, "oracle": False, "coarse": {"ceiling": 0.5}}]
    spec = _reference("ray/MLP=276:-0.01,474:0.01")
    assert reference_points(spec, results) == ("ray/MLP", [(276.0, -0.01), (474.0, 0.01)])
    report = {"runs": {"full/0": {"variant": "full", "seed": 0, "s_per_iter": 0.2,
                                  "curve": [{"step": 100, "normal_error_ratio": 0.9},
                                            {"step": 200, "normal_error_ratio": 0.8}]}}}
    path = tmp_path / "mlp" / "quality.json"
    path.parent.mkdir()
    path.write_text(json.dumps(report))
    label, points = reference_points(_reference(str(path)), results)
    assert label == "mlp (ray/MLP)"
    assert points == [(pytest.approx(20.0), pytest.approx(0.2)), (pytest.approx(40.0), pytest.approx(0.4))]
    for bad in ("nothing-here", "label=", "label=12:x"):  # refused while the command line is read
        with pytest.raises(argparse.ArgumentTypeError, match="neither a file"):
            _reference(bad)


def test_every_bench_verb_has_help_and_takes_device(tmp_path, capsys, monkeypatch):
    """Each verb: --help works; --device cpu reaches its main as a torch.device; a bad device stops with
    one line naming the verb and --device, before its main runs."""
    assert {"all", "render", "quality", "texel", "batch"} <= set(VERBS)
    for verb, (module, _) in VERBS.items():
        assert cli.main(["bench", verb, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: pbidr bench {verb} ") and "--device" in out, verb
        seen = []
        monkeypatch.setattr(module, "main", lambda args: seen.append(args.device) or 0)
        required = [a.format(tmp=tmp_path) for a in REQUIRED.get(verb, [])]
        assert cli.main(["bench", verb, *required, "--device", "cpu"]) == 0, capsys.readouterr().err
        assert seen == [torch.device("cpu")], verb
        for bad in ("gpu", "cuda:x"):
            assert cli.main(["bench", verb, *required, "--device", bad]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and err.startswith(f"pbidr bench {verb}: error: --device {bad}: "), err
        assert seen == [torch.device("cpu")], verb  # the bad devices never reached the verb


def test_bench_verb_help_imports_none_of_the_stages_it_runs():
    """`pbidr bench VERB --help` builds the parser only: the verbs' work modules, the trainer and the
    preprocess pipeline are imported when a verb runs, not to list its flags."""
    heavy = ["pbidr.bench.sections", "pbidr.bench.texel_fit", "pbidr.bench.quality_run", "pbidr.bench.flops",
             "pbidr.training.trainer", "pbidr.preprocess.pipeline", "trimesh"]
    code = ("import contextlib, io, sys\n"
            "from pbidr.commands.main import main\n"
            f"for verb in {list(VERBS)!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        assert main(['bench', verb, '--help']) == 0\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(CODE), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout


def test_matrix_reuses_a_finished_condition_only_when_nothing_it_depends_on_changed(tmp_path):
    """An interrupted ``bench matrix`` resumes: a condition kept in ``done/`` is reused for the same job and
    made again when the energy, the seed or the oracle differ, or when its maps are gone."""
    import json
    from dataclasses import replace

    from pbidr.bench.matrix import _cached, _job_key
    from pbidr.detail.fit import FitConfig

    job = {"out": str(tmp_path), "preset": "classic", "seed": 0, "fit": FitConfig(), "resolution": 256,
           "oracle": True, "threads": 1, "device": "cpu"}
    assert _cached(job) is None
    (tmp_path / "done").mkdir()
    (tmp_path / "maps").mkdir()
    (tmp_path / "done" / "classic-s0.json").write_text(json.dumps({"key": _job_key(job), "result": {"seed": 0}}))
    assert _cached(job) is None  # no maps: the contact sheet needs them
    (tmp_path / "maps" / "classic-s0.npz").write_bytes(b"")
    assert _cached(job) == {"seed": 0, "cached": True}
    assert _cached(dict(job, threads=2, device="cuda")) is not None
    for other in (dict(job, fit=replace(FitConfig(), mark_layer_cost=0.0)), dict(job, oracle=False),
                  dict(job, resolution=512)):
        assert _cached(other) is None
    assert _cached(dict(job, seed=1)) is None  # another file
    (tmp_path / "done" / "classic-s0.json").write_text("{not json")
    assert _cached(job) is None


def test_matrix_summary_says_not_measured_for_an_oracle_it_did_not_run():
    from pbidr.bench.matrix import report_lines, summarise

    def result(rec, oracle=None):
        coarse = {"recovered": rec, "ratio": 1.0 - 0.5 * rec, "ceiling": 0.5, "correlation": 0.6, "rms_mm": 0.1,
                  "true_rms_mm": 0.2, "error_rms_mm": 0.15, "leak": 1.0, "leak_by_kind": {"grey": 1.3}}
        r = {"preset": "classic", "seed": 0, "ceiling": {"coarse": 0.5},
             "fit": {"coarse": coarse, "dense": {"recovered": rec}, "fit_s": 1.0}}
        if oracle is not None:
            r["oracle"] = {"coarse": {"ratio": oracle}}
        return r

    without = summarise([result(0.5), result(0.3)])
    assert without["oracle_drift_misses"] is None and without["targets"]["oracle within ceiling + 0.1"] is None
    assert without["recovered_coarse"] == {"worst": 0.3, "median": 0.4}
    assert not without["targets"]["leak <= 1.2 per kind"]
    report = {"matmul_gflops": [1.0, 1.0], "jobs": 1, "threads": 1, "wall_s": 1.0, "device": "cpu",
              "results": [result(0.5)], "summary": without}
    assert "- oracle within ceiling + 0.1: not measured" in report_lines(report)
    measured = summarise([result(0.5, oracle=0.55), result(0.3, oracle=0.7)])
    assert measured["oracle_drift_misses"] == 1 and measured["targets"]["oracle within ceiling + 0.1"] is False
