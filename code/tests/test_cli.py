"""The command line a new user meets (issue 16): one default conf, arguments checked before work with
one line naming the source, units, and one flag vocabulary across subcommands and scripts."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from pbidr import __version__
from pbidr.batch.stages import parse_overrides
from pbidr.commands import main as cli
from pbidr.errors import PbidrError
from pbidr.geometry.cameras import Rig
from pbidr.io.load import load_mesh
from pbidr.io.obj import write_obj
from pbidr.preprocess.pipeline import preprocess
from pbidr.preprocess.sample import make_sample
from pbidr.training import trainer as trainer_module
from pbidr.training.conf import conf_to_text, load_conf, parse_conf, parse_set, resolve_conf, same_conf

from conftest import textured_sphere, toy_conf

REPO = Path(__file__).resolve().parents[2]
TINY = toy_conf(2)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_sample(root / "raw", grid=(40, 50), texture_size=64)
    preprocess(root / "raw", root / "scan", Rig(yaw=2, yaw_angle=30, res=24), progress=False)
    (root / "tiny.conf").write_text(TINY)
    return root


def _one_line(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


# ------------------------------------------------------------------------------------------------
# 1. One default everywhere


def test_the_default_conf_is_the_detail_mode_everywhere(capsys):
    assert resolve_conf(None, None) == REPO / "confs" / "fast.conf"
    assert resolve_conf(None, "paper") == REPO / "confs" / "test.conf"
    assert resolve_conf(None, "detail") == REPO / "confs" / "fast.conf"
    for sub in ("train", "batch"):
        assert cli.main([sub, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "default: --preset detail = confs/fast.conf" in text, text
        assert "--preset paper or --conf confs/test.conf" in text, text  # how to get the paper's settings
        assert "original's = confs/test.conf" not in text
    for script in ("fast_train.sh", "batch.sh"):
        assert 'CONF="${CONF:-confs/fast.conf}"' in (REPO / "script" / script).read_text()
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "`confs/fast.conf` (`--preset detail`), the default of `pbidr train`, `pbidr batch` and the scripts" in readme


def test_print_conf_shows_the_resolved_tree_with_its_docs(capsys):
    assert cli.main(["train", "--print-conf", "--preset", "paper", "--set", "train.batch_size=512"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# " + str(REPO / "confs" / "test.conf") + " with --set train.batch_size=512\n")
    assert "    # rays per iteration (the original's num_pixels)\n    batch_size = 512  # default: 2048\n" in text
    # every key has its doc above it, and the text is the conf itself: it reads back as the same tree
    lines = text.splitlines()
    assert all(lines[i - 1].strip().startswith("#") for i, line in enumerate(lines)
               if " = " in line and not line.lstrip().startswith("#"))
    expected = load_conf(REPO / "confs" / "test.conf", {"train.batch_size": 512})
    assert parse_conf(text, "printed conf") == expected
    # it needs no scan and no run directory, but a bad --set still fails as it would for a run
    assert cli.main(["train", "--print-conf", "--set", "train.batch_sise=1"]) == 2
    assert "did you mean batch_size?" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["detail", "pbidr-cpu", "detail-mlp"])
def test_run_conf_saved_by_an_older_pbidr_still_loads(name):
    """run.conf files written before the typed config tree (by commit 88a95ac, one per preset) load into the
    same tree they were written from, and save back to a text that resolves the same."""
    text = (Path(__file__).parent / "data" / "older_run_confs" / f"{name}.conf").read_text()
    conf = parse_conf(text, f"{name}.conf")
    assert conf.train.iters in (20, 60) and conf.train.plot_freq == 0
    assert same_conf(conf_to_text(conf), text)
    from_preset = load_conf(resolve_conf(None, name), {"train.iters": conf.train.iters, "train.plot_freq": 0})
    # the run resolved what its preset leaves open (the map's resolution from the texture)
    from_preset.model.displacement_map.resolution = conf.model.displacement_map.resolution
    # issue 24 changed the texel energy's defaults (a fill where held-out texels say so, a lobe, the mark layer);
    # a run written before keeps what it wrote (light_model) and takes the new keys' defaults
    from_preset.loss.texel.light_model = conf.loss.texel.light_model
    assert conf.model == from_preset.model and conf.loss == from_preset.loss and conf.dataset == from_preset.dataset


def test_train_without_conf_runs_the_detail_mode(scan, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(["train", "-i", str(scan / "scan"), "-o", str(run), "--iters", "1", "--device", "cpu", "--quiet",
                     "--set", "train.plot_res=16", "--set", "train.batch_size=64"])
    assert code == 0, capsys.readouterr().err
    conf = load_conf(run / "run.conf")
    assert conf.model.sdf_network.parameterisation == "displacement_map"
    assert conf.train.solver == "texels"
    assert conf.train.iters == 1 and conf.train.batch_size == 64


def test_preset_and_conf_are_one_choice(scan, tmp_path, capsys):
    _one_line(capsys, cli.main(["train", "-i", str(scan / "scan"), "-o", str(tmp_path / "r"), "--preset", "paper",
                                "--conf", str(scan / "tiny.conf")]), "--preset", "--conf")
    _one_line(capsys, cli.main(["train", "-i", str(scan / "scan"), "-o", str(tmp_path / "r"), "--preset", "gpu"]),
              "--preset", "paper")
    assert not (tmp_path / "r").exists()


def test_long_run_estimate():
    line = trainer_module.long_run_warning(1.0, 34000, "cpu")
    assert line is not None and "9.4 h" in line and "--preset detail" in line and "\n" not in line
    assert trainer_module.long_run_warning(0.2, 2500, "cpu") is None  # 8 minutes: no note
    assert trainer_module.long_run_warning(1.0, 34000, "cpu", budget_s=600) is None  # the budget stops it first


def test_trainer_prints_the_estimate_from_its_first_steps(scan, tmp_path, capsys, monkeypatch):
    # the threshold, not the timing, is lowered: the note comes from the steps this run measured
    monkeypatch.setattr(trainer_module, "LONG_RUN_S", 1e-6)
    assert cli.main(["train", "-i", str(scan / "scan"), "-o", str(tmp_path / "run"), "--conf", str(scan / "tiny.conf"),
                     "--iters", "8", "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "s/it on cpu the remaining 2 steps take about" in line]
    assert len(notes) == 1, err
    assert "the remaining 2 steps" in (tmp_path / "run" / "log.txt").read_text()


# ------------------------------------------------------------------------------------------------
# 2. Validation before work, one line naming the source


@pytest.mark.parametrize("extra, words", [
    (["--iters", "0"], ["--iters", ">= 1"]),
    (["--iters", "-5"], ["--iters", ">= 1"]),
    (["--nepoch", "0"], ["--nepoch", ">= 1"]),
    (["--iters", "5", "--set", "train.iters=0"], ["--iters 5", "--set train.iters=0", "only one"]),
    (["--nepoch", "3", "--set", "train.iters=7"], ["--nepoch 3", "--set train.iters=7"]),
    (["--seed", "1", "--set", "train.seed=2"], ["--seed 1", "--set train.seed=2"]),
    (["--set", "model.sdf_network.dims=[64,"], ["--set model.sdf_network.dims=[64,", "not a HOCON value"]),
    (["--set", "model.ray_tracer.mode=foo"], ["--set model.ray_tracer.mode=foo", "idr, mesh"]),
    (["--set", "train.batch_sise=512"], ["--set train.batch_sise=512", "unknown key train.batch_sise",
                                          "did you mean batch_size?"]),
    (["--set", "train.batch_size=0"], ["--set train.batch_size=0", "must be > 0"]),
    (["--set", "model.sdf_network.skip_in=[7]"], ["--set model.sdf_network.skip_in=[7]", "skip_in"]),
    (["--set", "train.iters"], ["--set train.iters", "KEY=VALUE"]),
    (["--device", "cuda:99"], ["--device cuda:99"]),
])
def test_train_refuses_before_reading_the_scan(scan, tmp_path, capsys, extra, words):
    argv = ["train", "-i", str(tmp_path / "no_scan"), "-o", str(tmp_path / "run"), "--conf", str(scan / "tiny.conf"),
            "--quiet", *extra]
    err = _one_line(capsys, cli.main(argv), *words)
    assert "no_scan" not in err and "tiny.conf" not in err  # the flag is at fault, not the scan or the file
    assert not (tmp_path / "run").exists()


def test_conf_file_faults_name_the_file(scan, tmp_path, capsys):
    bad = tmp_path / "bad.conf"
    for text, words in [("model { diffuse_normal = sfd }", ["model.diffuse_normal", "coarse, sdf"]),
                        ("train { iters = -1 }", ["train.iters", ">= 0"]),
                        ("train { batch_size = [1, }", ["not valid HOCON"])]:
        bad.write_text(text)
        err = _one_line(capsys, cli.main(["train", "-i", str(scan / "scan"), "-o", str(tmp_path / "r"), "--conf",
                                          str(bad), "--set", "train.seed=3"]), str(bad), *words)
        assert "--set" not in err
    assert not (tmp_path / "r").exists()


def test_one_set_parser_for_train_and_batch():
    for item in ("model.sdf_network.dims=[64,", "x", "train.iters=1, train.seed=2"):
        with pytest.raises(PbidrError) as a:
            parse_set([item])
        with pytest.raises(PbidrError) as b:
            parse_overrides([item])
        assert str(a.value) == str(b.value) and str(a.value).startswith(f"--set {item}:")
    assert parse_overrides(["model.sdf_network.dims=[64, 64]", "model.ray_tracer.mode=mesh"]) == {
        "model.sdf_network.dims": [64, 64], "model.ray_tracer.mode": "mesh"}


def test_batch_checks_before_any_subject(scan, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    base = ["batch", "-i", str(inputs), "-o", str(tmp_path / "out"), "--conf", str(scan / "tiny.conf")]
    _one_line(capsys, cli.main(base + ["--iters", "3", "--set", "train.iters=4"]), "--iters 3", "--set train.iters=4")
    _one_line(capsys, cli.main(base + ["--set", "train.batch_sise=4"]), "--set train.batch_sise=4", "unknown key")
    _one_line(capsys, cli.main(base + ["--cpus-per-job", "2"]), "--cpus-per-job", "--engine ray")
    _one_line(capsys, cli.main(base + ["--iters", "0"]), "--iters")
    assert not (tmp_path / "out").exists()
    from pbidr.commands.batch import settings_from_args

    args = cli.build_parser().parse_args(["batch", "-i", str(inputs), "-o", str(tmp_path / "out")])
    assert Path(settings_from_args(args).conf) == REPO / "confs" / "fast.conf"  # the same default as train


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_preprocess_refuses_a_device_that_is_not_there(sphere_raw, tmp_path, capsys):
    _one_line(capsys, cli.main(["preprocess", "-i", str(sphere_raw), "-o", str(tmp_path / "scan"), "--device",
                                "cuda"]), "--device cuda", "not available")
    assert not (tmp_path / "scan").exists()


def test_a_missing_cuda_index_is_refused_everywhere(sphere_raw, tmp_path, capsys):
    n = torch.cuda.device_count()
    for argv in (["preprocess", "-i", str(sphere_raw), "-o", str(tmp_path / "scan")],
                 ["sample", "-o", str(tmp_path / "sample")],
                 ["score", "-i", str(tmp_path / "m.obj"), "--sample", str(tmp_path)],
                 ["photo", "-i", str(tmp_path / "p.png"), "-o", str(tmp_path / "raw")]):
        _one_line(capsys, cli.main(argv + ["--device", f"cuda:{n + 3}"]), f"--device cuda:{n + 3}")
    assert not (tmp_path / "scan").exists() and not (tmp_path / "sample").exists()


# ------------------------------------------------------------------------------------------------
# 3. Units


def test_a_face_in_metres_warns_and_units_are_recorded(tmp_path, capsys):
    raw = tmp_path / "raw_m"
    raw.mkdir()
    write_obj(raw / "mesh.obj", textured_sphere(radius=0.075))  # 0.15 tall: a face in metres
    small = ["--yaw", "1", "--res", "16", "--quiet"]
    assert cli.main(["preprocess", "-i", str(raw), "-o", str(tmp_path / "s1"), *small]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--units m" in err[0] and "metres" in err[0], err
    meta = json.loads((tmp_path / "s1" / "meta.json").read_text())
    assert meta["units"]["unit"] == "mm" and not meta["units"]["declared"]
    assert any("--units m" in w for w in meta["warnings"])

    assert cli.main(["preprocess", "-i", str(raw), "-o", str(tmp_path / "s2"), "--units", "m", *small]) == 0
    assert "units" not in capsys.readouterr().err
    meta = json.loads((tmp_path / "s2" / "meta.json").read_text())
    assert meta["units"] == {"unit": "m", "declared": True, "face_height": pytest.approx(0.15, rel=0.05),
                             "mm_per_unit": 1000.0}

    raw_mm = tmp_path / "raw_mm"
    raw_mm.mkdir()
    write_obj(raw_mm / "mesh.obj", textured_sphere(radius=75.0))
    assert cli.main(["preprocess", "-i", str(raw_mm), "-o", str(tmp_path / "s3"), *small]) == 0
    assert "units" not in capsys.readouterr().err  # 150 mm tall: no warning


def test_eval_prints_displacements_in_millimetres(tmp_path, capsys):
    make_sample(tmp_path / "sample", grid=(40, 50), texture_size=64)
    mesh = load_mesh(tmp_path / "sample" / "mesh.obj")
    raw = tmp_path / "raw_cm"
    raw.mkdir()
    write_obj(raw / "mesh.obj", dataclasses.replace(mesh, vertices=mesh.vertices / 10.0))  # the face in cm
    (tmp_path / "tiny.conf").write_text(TINY)
    assert cli.main(["preprocess", "-i", str(raw), "-o", str(tmp_path / "scan"), "--units", "cm", "--yaw", "2",
                     "--res", "24", "--quiet"]) == 0
    assert cli.main(["train", "-i", str(tmp_path / "scan"), "-o", str(tmp_path / "run"), "--conf",
                     str(tmp_path / "tiny.conf"), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "-i", str(tmp_path / "run"), "--no-rendering", "--mc-resolution", "16", "--device", "cpu",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "displacement:" in line)
    assert "world units" not in line and "the scan is in cm" in line, line
    got = [float(v) for v in re.findall(r"([+-]?\d+\.\d{4}) mm", line)]
    d = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["displacement"]["detailed_subdivided"]
    want = [d["mean"] * 10, d["std"] * 10, d["min"] * 10, d["max"] * 10]
    assert got == pytest.approx(want, abs=6e-5), (line, want)
    assert max(abs(v) for v in want) > 1e-4  # the numbers are not all zero (the test would be empty)


# ------------------------------------------------------------------------------------------------
# 7. One vocabulary


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_subcommand_has_a_description_device_and_the_same_flag_names():
    subs = _subparsers()
    assert set(subs) == {"sample", "photo", "preprocess", "train", "eval", "score", "batch", "view", "bench"}
    for name, p in subs.items():
        assert p.description and len(p.description) > 40, name
        opts = {o: a.dest for a in p._actions for o in a.option_strings}
        if name not in ("bench", "view"):  # view computes nothing: it shows what the stages wrote
            assert "--device" in opts, name
        elif name == "bench":  # bench has verbs, each with its own flags
            verbs = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices
            assert {"all", "render", "quality", "texel", "batch"} <= set(verbs)
            for verb, vp in verbs.items():
                assert vp.description and len(vp.description) > 40, verb
                assert "--device" in {o for a in vp._actions for o in a.option_strings}, verb
        if name not in ("bench", "sample"):  # the two that read no input
            assert opts.get("-i") == opts.get("--input") and "--input" in opts, name
        if name in ("sample", "preprocess", "train", "photo", "batch", "score"):
            assert opts.get("-o") == opts.get("--output") and "--output" in opts, name
    old = {"train": {"--data": "-i", "--exp-dir": "-o"}, "eval": {"--exp-dir": "-i"}, "score": {"--mesh": "-i",
           "--out": "-o"}, "photo": {"--image": "-i"}, "batch": {"--inputs": "-i", "--out": "-o", "--eval-views":
           "--views"}}
    for name, aliases in old.items():
        opts = {o: a.dest for a in subs[name]._actions for o in a.option_strings}
        for spelling, new in aliases.items():
            assert opts[spelling] == opts[new], (name, spelling)


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pbidr {__version__}"


def test_scripts_print_help_without_setting_up_the_venv(tmp_path):
    env = dict(os.environ, PBIDR_VENV=str(tmp_path / "venv"), PBIDR_PYTHON="/nonexistent/python")
    for script in sorted((REPO / "script").glob("*.sh")):
        if script.name == "_env.sh":
            continue
        res = subprocess.run(["bash", str(script), "--help"], env=env, capture_output=True, text=True, timeout=30,
                             cwd=tmp_path)
        assert res.returncode == 0, (script.name, res.stderr)
        assert res.stdout.startswith("#") and "[pbidr]" not in res.stdout + res.stderr, (script.name, res.stdout)
        assert "--help before _env.sh" not in res.stdout, script.name
    assert not (tmp_path / "venv").exists()
    text = (REPO / "script" / "fast_eval.sh").read_text()
    assert "--mc-resolution|--resolution)" in text and "--mc-resolution N" in text


def test_docs_link_only_files_that_exist():
    broken = []
    for doc in [REPO / "README.md", REPO / "INSTALL.md", REPO / "BENCHMARKS.md", REPO / "data" / "README.md",
                *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        targets = re.findall(r"\]\(([^)#\s]+)", text) + re.findall(r"(?<![\w/.])((?:\.\./)+[\w./-]+\.md)", text)
        for target in targets:
            if re.match(r"[a-z]+://", target):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken
