"""Outputs never destroy what pbidr did not write (pbidr.utils.outputs), and logs fit non-interactive use."""

from __future__ import annotations

import io
import json

import pytest

from pbidr.commands.main import main
from pbidr.errors import PbidrError
from pbidr.preprocess.sample import make_sample
from pbidr.utils.outputs import MARKER, check_output, read_marker, stage_done
from pbidr.utils.progress import PlainProgress, progress_bar

PRE = ["--yaw", "1", "--res", "16", "--quiet"]


def _one_line_error(capsys, code, *words):
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def test_preprocess_output_policy(sphere_raw, tmp_path, capsys):
    # a missing path is created, with the stage's marker
    scan = tmp_path / "new" / "scan"
    assert main(["preprocess", "-i", str(sphere_raw), "-o", str(scan), *PRE]) == 0
    assert stage_done(scan, "preprocess") and read_marker(scan)["stage"] == "preprocess"
    assert not stage_done(scan, "sample") and not stage_done(tmp_path / "nothing", "preprocess")
    # an earlier output of the same stage: refused without --overwrite, replaced with it
    before = (scan / "meta.json").read_text()
    _one_line_error(capsys, main(["preprocess", "-i", str(sphere_raw), "-o", str(scan), *PRE]), str(scan),
                    "--overwrite")
    assert (scan / "meta.json").read_text() == before
    (scan / "old_extra.txt").write_text("left by an earlier run")
    assert main(["preprocess", "-i", str(sphere_raw), "-o", str(scan), "--overwrite", *PRE]) == 0
    assert stage_done(scan, "preprocess") and not (scan / "old_extra.txt").exists()
    assert not [p for p in scan.parent.iterdir() if p.name.startswith(".")]  # no staging left
    # an existing regular file is refused, even with --overwrite, and kept
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for extra in ([], ["--overwrite"]):
        _one_line_error(capsys, main(["preprocess", "-i", str(sphere_raw), "-o", str(afile), *PRE, *extra]),
                        str(afile), "not a folder")
    assert afile.read_text() == "mine"
    # a folder holding the user's files is refused, even with --overwrite
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        _one_line_error(capsys, main(["preprocess", "-i", str(sphere_raw), "-o", str(mine), *PRE, *extra]),
                        str(mine), "notes.txt")
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # an empty folder is used
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["preprocess", "-i", str(sphere_raw), "-o", str(empty), *PRE]) == 0 and stage_done(empty, "preprocess")


def test_another_stage_output_is_never_replaced(tmp_path, capsys):
    raw = tmp_path / "raw"
    make_sample(raw, grid=(20, 30), texture_size=32)
    assert stage_done(raw, "sample")
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(PbidrError, match="pbidr sample"):
        check_output(raw, "preprocess", overwrite=True)
    _one_line_error(capsys, main(["preprocess", "-i", str(raw), "-o", str(raw), "--overwrite", *PRE]), str(raw),
                    "`pbidr sample` output")
    assert sorted(p.name for p in raw.iterdir()) == before
    # a sample folder written before the marker existed is still recognised for --overwrite
    (raw / MARKER).unlink()
    with pytest.raises(PbidrError, match="--overwrite"):
        make_sample(raw, grid=(20, 30), texture_size=32)
    make_sample(raw, grid=(20, 30), texture_size=32, overwrite=True)
    assert stage_done(raw, "sample")
    assert json.loads((raw / MARKER).read_text())["stage"] == "sample"


def test_train_exp_dir_policy(tmp_path, capsys, sphere_raw):
    scan = tmp_path / "scan"
    assert main(["preprocess", "-i", str(sphere_raw), "-o", str(scan), "--yaw", "2", "--res", "16", "--quiet"]) == 0
    conf = tmp_path / "tiny.conf"
    conf.write_text("train { batch_size = 16, iters = 2, plot_freq = 0, plot_res = 8 }\n"
                    "model { sdf_network { dims = [8], skip_in = [], multires = 0 }, ray_tracer { mode = mesh } }\n")
    argv = ["train", "--data", str(scan), "--conf", str(conf), "--device", "cpu", "--quiet", "--exp-dir"]
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _one_line_error(capsys, main([*argv, str(afile)]), str(afile), "not a folder")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    _one_line_error(capsys, main([*argv, str(mine), "--overwrite"]), str(mine), "notes.txt")
    assert afile.read_text() == "mine" and (mine / "notes.txt").read_text() == "keep me"
    run = tmp_path / "run"
    assert main([*argv, str(run)]) == 0 and stage_done(run, "train")
    _one_line_error(capsys, main([*argv, str(run)]), str(run), "--resume", "--overwrite")
    (run / "plots" / "mine.png").write_bytes(b"x")
    assert main([*argv, str(run), "--overwrite", "--iters", "1"]) == 0  # started again from scratch
    assert "step 1 " in (run / "log.txt").read_text() and "step 2 " not in (run / "log.txt").read_text()
    assert not (run / "plots" / "mine.png").exists() and stage_done(run, "train")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # stderr is not a terminal here: the progress bar is plain lines, no carriage returns
    capsys.readouterr()
    assert main([a for a in argv if a != "--quiet"] + [str(tmp_path / "run2")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "train: 2/2 it (100%)" in err, err


def test_leftovers_of_a_killed_replacement_are_repaired(tmp_path):
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    raw = tmp_path / "raw"
    make_sample(raw, grid=(20, 30), texture_size=32)
    # killed between "move the earlier output aside" and "rename the new one in"
    raw.rename(tmp_path / f".raw.old-{dead}")
    (tmp_path / f".raw.{dead}.abc.tmp").mkdir()  # and its staging folder
    with pytest.raises(PbidrError, match="--overwrite"):
        check_output(raw, "sample")
    assert stage_done(raw, "sample") and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_plain_progress_lines_when_not_a_terminal():
    out = io.StringIO()
    bar = progress_bar(total=1000, desc="train", file=out, every_steps=100, every_seconds=3600)
    assert isinstance(bar, PlainProgress)
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix_str("loss 0.1")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 10, lines
    assert lines[-1].startswith("train: 1000/1000 it (100%)") and lines[-1].endswith("loss 0.1")
    # by time: every_seconds = 0 gives a line per step
    out = io.StringIO()
    bar = progress_bar(total=5, initial=2, desc="x", file=out, every_steps=1000, every_seconds=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert len(out.getvalue().splitlines()) == 3

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not isinstance(progress_bar(total=3, file=Tty()), PlainProgress)
