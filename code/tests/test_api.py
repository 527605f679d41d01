"""The Python API (pbidr.recover / load_result / score): README's example runs as written; typed results;
the command line's checks and one-line errors as one exception type; progress to a callback or nowhere."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

import pbidr
from pbidr.evaluation.export import read_exr


def test_readme_example_runs_and_its_numbers_are_the_runs(readme_run):
    folder, names, printed, seconds = readme_run
    result, again = names["result"], names["again"]
    out = folder / "out"
    assert isinstance(result, pbidr.Result) and result.paths.eval == out / "run" / "eval"
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())
    m = result.metrics
    assert m.step == 30 == metrics["step"]
    assert m.psnr_db == pytest.approx(metrics["rendering"]["psnr_mean"])
    dense = metrics["displacement"]["detailed_subdivided"]
    # the sample is in mm, so the displacement in mm is the eval's in world units
    assert (m.displacement_min_mm, m.displacement_max_mm) == pytest.approx((dense["min"], dense["max"]))
    assert m.recovered_fraction == pytest.approx(metrics["score"]["recovered_fraction"])
    # what the example printed is what it computed
    lines = printed.splitlines()
    assert lines[0].split() == [str(m.recovered_fraction), str(m.psnr_db), str(m.displacement_max_mm)]
    assert lines[2] == str(out / "run" / "eval" / "detailed_subdivided.obj")
    assert float(lines[3]) == pytest.approx(metrics["score"]["normal_error_ratio"])
    # the maps: the texture's layout, displacement.exr's numbers, an albedo that is the sample's skin
    d_mm, albedo = names["d_mm"], names["albedo"]
    assert d_mm.shape == (128, 128) and albedo.shape == (128, 128, 3) and albedo.dtype == np.float32
    np.testing.assert_array_equal(d_mm, read_exr(out / "run" / "eval" / "displacement.exr"))
    assert float(albedo.min()) >= 0.0 and float(albedo.max()) <= 1.0
    # it is the albedo with the shading taken out: it follows the sample's true albedo, not its shaded texture
    from PIL import Image

    def grey(path):
        return np.asarray(Image.open(path).convert("RGB").resize((128, 128)), dtype=float).mean(axis=2).ravel()

    def corr(image):
        return float(np.corrcoef(albedo.mean(axis=2).ravel(), image)[0, 1])

    assert corr(grey(folder / "face" / "albedo.png")) > 0.9 > 0.5 > corr(grey(folder / "face" / "mesh.png"))
    # the light: the sample's texture is lit from its LIGHT_DIRECTION, and the fit finds it
    from pbidr.preprocess.sample import LIGHT_DIRECTION

    light = result.light
    assert light.model == "lambert" and light.ambient > 0 and light.diffuse > 0
    assert float(np.dot(light.direction, LIGHT_DIRECTION)) > 0.95, light.direction
    assert again.paths == result.paths and again.metrics == result.metrics
    print(f"README example: {seconds:.1f} s")


def test_load_result_takes_the_run_the_eval_and_the_root(readme_run):
    out = readme_run[0] / "out"
    for path in (out, out / "run", out / "run" / "eval"):
        assert pbidr.load_result(path).paths.eval == out / "run" / "eval"


def test_score_returns_the_cli_numbers(readme_run, capsys):
    from pbidr.commands.main import main

    folder = readme_run[0]
    mesh = folder / "out" / "run" / "eval" / "detailed.obj"
    got = pbidr.score(mesh, folder / "face")
    assert main(["score", "-i", str(mesh), "--sample", str(folder / "face")]) == 0
    cli = json.loads(capsys.readouterr().out)
    for key in ("normal_error_ratio", "ceiling_ratio", "recovered_fraction", "displacement_correlation",
                "displacement_rms_mm", "albedo_leak"):
        assert getattr(got, key) == pytest.approx(cli[key]), key


def _one_line_error(call, *words: str) -> str:
    with pytest.raises(pbidr.PbidrError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text
    for w in words:
        assert w in text, (w, text)
    return text


def test_bad_input_raises_one_line_errors_before_any_work(readme_run, tmp_path):
    face = readme_run[0] / "face"
    out = tmp_path / "out"

    def recover(mesh=face, **kw):
        return lambda: pbidr.recover(mesh, out, **kw)

    _one_line_error(recover(mesh=tmp_path / "nope.obj"), "nope.obj", "no such mesh")
    _one_line_error(recover(preset="fast"), "--preset fast", "detail")
    _one_line_error(recover(batchsize=3), "recover(batchsize=3)", "batch_size")
    _one_line_error(recover(dims=[8]), "several blocks", "model__sdf_network__dims")
    _one_line_error(recover(iters=-1), "recover(iters=-1)", "train.iters")
    _one_line_error(recover(model__sdf_network__dimz=[8]), "model.sdf_network.dimz")
    _one_line_error(recover(yaw=0), "view rig")
    _one_line_error(recover(mc_resolution=4), "mc_resolution=4")
    _one_line_error(recover(device="tpu"), "tpu")
    _one_line_error(recover(progress="yes"), "progress='yes'")
    _one_line_error(lambda: pbidr.load_result(tmp_path), str(tmp_path), "not a run")
    _one_line_error(lambda: pbidr.score(tmp_path / "x.obj", face), "x.obj")
    assert not out.exists()  # every check came before the first stage
    # an earlier recover is replaced only with overwrite=True; a foreign folder never
    _one_line_error(lambda: pbidr.recover(face, readme_run[0] / "out"), "out/scan", "--overwrite")
    (out / "scan").mkdir(parents=True)
    (out / "scan" / "notes.txt").write_text("mine")
    _one_line_error(lambda: pbidr.recover(face, out, overwrite=True), "never replaced")
    assert (out / "scan" / "notes.txt").read_text() == "mine"


def test_progress_goes_to_the_callback_or_nowhere(tmp_path, capfd):
    face = tmp_path / "face"
    pbidr.make_sample(face, grid=(20, 26), texture_size=32)
    events: list[pbidr.ProgressEvent] = []
    small = dict(iters=4, resolution=64, yaw=1, res=24, mc_resolution=16, eval_views=[1], checkpoint_freq=0)
    pbidr.recover(face, tmp_path / "a", progress=events.append, **small)
    captured = capfd.readouterr()
    assert "eval:" not in captured.err and "train" not in captured.err, captured.err
    stages = [e.stage for e in events]
    assert stages.index("train") > stages.index("preprocess") and stages.index("eval") > stages.index("train")
    train = [e for e in events if e.stage == "train" and e.task == "train"]
    assert [e.done for e in train] == [1, 2, 3, 4] and {e.total for e in train} == {4}
    assert any(e.note.startswith("eval: score done") for e in events)
    # from a thread of its own, as a notebook's background job (signal handlers are the main thread's)
    failures: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catching(failures, lambda: pbidr.recover(
        face, tmp_path / "b", progress=False, **small)))
    worker.start()
    worker.join()
    assert not failures, failures
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == "", captured
    assert math.isfinite(pbidr.load_result(tmp_path / "b").metrics.displacement_max_mm)


def _catching(failures: list, call) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 -- reported to the test's thread
        failures.append(exc)


def test_the_api_docs_and_the_command_lines_help_say_the_same(capsys):
    """recover's docstring names what the command line's flags name, with the same defaults and choices."""
    from pbidr import api
    from pbidr.commands.main import build_parser, main
    from pbidr.training.conf import PRESETS

    doc = " ".join(api.recover.__doc__.split())
    helps = {}
    for sub in ("preprocess", "train", "eval"):
        assert main([sub, "--help"]) == 0
        helps[sub] = " ".join(capsys.readouterr().out.split())
    for name in api.RIG_OPTIONS:  # the view rig: preprocess's flags
        assert f"--{name.replace('_', '-')}" in helps["preprocess"] and f"``{name}``" in doc, name
    for preset in PRESETS:
        assert preset in helps["train"] and f"``{preset}``" in doc, preset
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    defaults = {a.dest: a.default for a in eval_parser._actions}
    assert api.EVAL_OPTIONS["mc_resolution"] == defaults["mc_resolution"] and "``mc_resolution`` (512)" in doc
    assert api.EVAL_OPTIONS["eval_views"] == defaults["views"] and "``default``, ``all``" in doc
    assert "default|all|I,J,K" in helps["eval"] and "the frontal view and the two extreme yaws" in helps["eval"]
    assert "the frontal view and the two extreme yaws" in doc
    for unit in ("mm", "cm", "m"):
        assert f"``{unit}``" in doc and unit in helps["preprocess"]
    for device in ("auto", "cpu", "cuda"):
        assert f"``{device}" in doc and device in helps["train"]
    assert "--set" in helps["train"] and "as ``pbidr train --set``" in doc


def test_a_ray_mode_run_has_no_light_and_its_albedo_is_the_networks(tmp_path):
    """PBIDR's ray model shades with networks: no explicit light, and its albedo map is the albedo network
    at each texel's point of detailed.obj; checked here at the texels under the mesh's own vertices."""
    import torch

    from conftest import toy_conf
    from pbidr.datasets.scan import load_scan
    from pbidr.evaluation.run_eval import prepare_model
    from pbidr.geometry.cameras import to_normalised
    from pbidr.io.load import load_mesh
    from pbidr.training.checkpoints import load_run

    face = tmp_path / "face"
    pbidr.make_sample(face, grid=(20, 26), texture_size=32)
    (tmp_path / "toy.conf").write_text(toy_conf(3))
    result = pbidr.recover(face, tmp_path / "out", conf=tmp_path / "toy.conf", yaw=1, res=24, mc_resolution=16,
                           eval_views=[1], progress=False)
    assert result.light is None
    albedo = result.albedo_map()
    assert albedo.shape == (32, 32, 3) and np.isfinite(albedo).all()
    run = load_run(result.paths.run)
    detailed = load_mesh(result.paths.detailed)
    inner = np.flatnonzero((detailed.uv > 0.1).all(axis=1) & (detailed.uv < 0.9).all(axis=1))[::7]
    corner = {int(t): int(v) for v, t in zip(detailed.faces.ravel(), detailed.face_uv.ravel())}
    uv = detailed.uv[inner]
    rows = np.clip(np.round((1.0 - uv[:, 1]) * 32 - 0.5).astype(int), 0, 31)
    cols = np.clip(np.round(uv[:, 0] * 32 - 0.5).astype(int), 0, 31)
    points = detailed.vertices[[corner[int(t)] for t in inner]]
    data = load_scan(result.paths.scan, None, [0])
    prepare_model(run.model, data.mesh, data.scale_mat, run.step)
    with torch.no_grad():
        x = torch.as_tensor(to_normalised(points, data.scale_mat), dtype=torch.float32)
        want = run.model.albedo_at(x, run.model.sdf_network(x)[:, 1:]).numpy()
    # half a texel from the vertex costs < 0.01 here; a map upside down or mirrored is off by > 0.03
    np.testing.assert_allclose(albedo[rows, cols], np.clip(want, 0, 1), atol=0.015)
