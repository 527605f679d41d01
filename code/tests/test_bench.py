"""`script/benchmark.sh --quick` (pbidr bench all --quick) runs and writes every key."""

import json

from pbidr.bench import markdown, run_all


def test_quick_benchmark_writes_every_key(tmp_path):
    out = tmp_path / "results.json"
    results = run_all(tmp_path, out, quick=True, progress=False)
    saved = json.loads(out.read_text())
    for key in ("machine", "e2e", "render", "eval", "train_speed", "quality", "date", "quick"):
        assert key in saved, key
    assert saved["machine"]["matmul_gflop_s"] > 0
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
