"""``pbidr batch``: subject ids, failures that stay local, summary, resume after a kill, the Ray engine.

The Ray tests share one local Ray (module fixture, 2 CPUs, no dashboard): Ray's start costs seconds.
Ray is an optional extra that script/test.sh installs; without it these tests fail and say so.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbidr.batch.engines import import_ray
from pbidr.batch.stages import error_line
from pbidr.batch.state import STAGES, subject_paths
from pbidr.batch.subjects import find_subjects
from pbidr.commands.main import main
from pbidr.errors import PbidrError
from pbidr.preprocess.sample import make_sample

TINY = """
train { batch_size = 128, iters = 10, plot_freq = 0, plot_res = 32, checkpoint_freq = 5, learning_rate = 5.0e-4 }
model {
  feature_vector_size = 8
  sdf_network { dims = [32, 32], skip_in = [], multires = 2 }
  diffuse_network { dims = [8], multires = 0 }
  specular_network { dims = [8], multires_view = 0, multires_normal = 0 }
  albedo_network { dims = [16], multires = 0 }
  ray_tracer { n_steps = 16, n_secant_steps = 4 }
}
"""
TINY_ARGS = ["--res", "64", "--yaw", "3", "--yaw-angle", "30", "--mc-resolution", "32", "--eval-views", "1",
             "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def subjects_root(tmp_path_factory):
    """Two tiny built-in samples (with ground truth) and one broken mesh, plus the tiny conf."""
    root = tmp_path_factory.mktemp("batch")
    inputs = root / "inputs"
    for seed in (0, 1):
        make_sample(inputs / f"face{seed}", seed=seed, grid=(60, 80), texture_size=128)
    (inputs / "broken").mkdir()
    (inputs / "broken" / "mesh.obj").write_text("v 0 0 0\nv 1 0 0\nf 1 2 7\n")
    (root / "tiny.conf").write_text(TINY)
    return root


@pytest.fixture(scope="module")
def local_ray():
    try:
        ray = import_ray()
    except PbidrError as err:
        pytest.fail(f"{err} (script/test.sh installs it)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _batch(root: Path, out: Path, *extra: str, inputs: Path | None = None) -> int:
    return main(["batch", "--inputs", str(inputs or root / "inputs"), "--out", str(out),
                 "--conf", str(root / "tiny.conf"), *TINY_ARGS, *extra])


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv") as f:
        return {r["subject"]: r for r in csv.DictReader(f)}


def _stage_times(out: Path, sid: str) -> dict[str, tuple]:
    status = json.loads(subject_paths(out, sid).status.read_text())
    return {s: (r.get("started"), r.get("finished"), r.get("state")) for s, r in status["stages"].items()}


# ------------------------------------------------------------------------------------------------ subjects

def test_subject_ids_lists_and_clashes(tmp_path):
    make_sample(tmp_path / "raw" / "a b", grid=(8, 8), texture_size=16)
    (tmp_path / "raw" / "c.obj").write_text("v 0 0 0\n")
    (tmp_path / "raw" / ".hidden").mkdir()
    (tmp_path / "raw" / "notes.txt").write_text("not a subject")
    subs = find_subjects(tmp_path / "raw", out=None)
    assert [s.id for s in subs] == ["a_b", "c"]
    assert subs[0].ground_truth == (tmp_path / "raw" / "a b").resolve() and subs[1].ground_truth is None

    # a list file: relative paths, comments; a file called mesh.* takes its folder's name
    (tmp_path / "list.txt").write_text("# subjects\nraw/a b/mesh.obj\n\n/nonexistent-dir-xyz  # gone\n")
    with pytest.raises(PbidrError, match=r"list.txt:4: /nonexistent-dir-xyz: no such file"):
        find_subjects(tmp_path / "list.txt")
    (tmp_path / "list.txt").write_text("raw/a b/mesh.obj\nraw/c.obj\n")
    assert [s.id for s in find_subjects(tmp_path / "list.txt")] == ["a_b", "c"]

    # the same id twice (case ignored) is refused before anything runs
    (tmp_path / "raw" / "C").mkdir()
    with pytest.raises(PbidrError, match="same id"):
        find_subjects(tmp_path / "raw")
    # --out inside --inputs is never a subject
    (tmp_path / "raw" / "C").rmdir()
    (tmp_path / "raw" / "out").mkdir()
    assert [s.id for s in find_subjects(tmp_path / "raw", out=tmp_path / "raw" / "out")] == ["a_b", "c"]


def test_error_lines_and_missing_ray(monkeypatch):
    assert error_line(PbidrError("x.obj: bad\nmesh")) == "x.obj: bad mesh"
    assert error_line(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")).startswith("out of memory")
    assert error_line(ValueError("a\nb")) == "ValueError: a b"
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(PbidrError, match=r"pip install -e \.\[ray\]"):
        import_ray()


def test_refuses_foreign_out_and_changed_settings(subjects_root, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert _batch(subjects_root, foreign, "--stages", "preprocess") == 2
    assert "not a pbidr batch output folder" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]

    out = tmp_path / "out"
    assert _batch(subjects_root, out, "--stages", "preprocess") == 1  # broken fails at preprocess
    rows = _rows(out)
    assert rows["face0"]["stage_reached"] == "preprocess" and rows["face0"]["status"] == "done"
    assert main(["batch", "--inputs", str(subjects_root / "inputs"), "--out", str(out), "--conf",
                 str(subjects_root / "tiny.conf"), *TINY_ARGS[:-1], "--res", "32", "--quiet"]) == 2
    assert "other settings (rig differ" in capsys.readouterr().err


def test_transient_failure_is_retried(subjects_root, tmp_path, monkeypatch):
    from pbidr.batch import stages

    calls = []
    real = stages.STAGE_FUNCTIONS["preprocess"]

    def flaky(subject, sp, settings, upstream_fresh):
        calls.append(subject.id)
        if len(calls) <= 2:  # the first attempt of each of the two batches below
            raise OSError("transient: network file system hiccup")
        return real(subject, sp, settings, upstream_fresh)

    monkeypatch.setitem(stages.STAGE_FUNCTIONS, "preprocess", flaky)
    (tmp_path / "list.txt").write_text(str(subjects_root / "inputs" / "face0") + "\n")
    out = tmp_path / "out"
    assert _batch(subjects_root, out, "--stages", "preprocess", inputs=tmp_path / "list.txt") == 1
    assert _rows(out)["face0"]["error"] == "preprocess: OSError: transient: network file system hiccup"
    assert _batch(subjects_root, tmp_path / "out2", "--stages", "preprocess", "--retries", "1",
                  inputs=tmp_path / "list.txt") == 0
    assert calls == ["face0", "face0", "face0"]  # failed, then failed + succeeded with one retry


def test_lost_worker_is_recorded_at_its_stage(tmp_path):
    from pbidr.batch.stages import BatchSettings, mark_failed
    from pbidr.batch.state import read_status, write_status
    from pbidr.batch.subjects import Subject

    settings = BatchSettings(out=tmp_path)
    sp = subject_paths(tmp_path, "s")
    write_status(sp, {"stages": {"preprocess": {"state": "done", "finished": "t0"},
                                 "train": {"state": "running", "started": "t1"}}, "state": "running"})
    mark_failed(settings, Subject("s", tmp_path, None), "Ray task lost: WorkerCrashedError")
    status = read_status(sp)
    assert status["state"] == "failed" and status["error"] == "train: Ray task lost: WorkerCrashedError"
    assert status["stages"]["preprocess"] == {"state": "done", "finished": "t0"}
    assert status["stages"]["train"]["state"] == "failed"


# ------------------------------------------------------------------------------------------------ Ray

def test_ray_engine_broken_subject_stays_local(subjects_root, tmp_path, local_ray, capsys):
    out = tmp_path / "out"
    assert _batch(subjects_root, out, "--engine", "ray", "--cpus-per-job", "1") == 1
    rows = _rows(out)
    assert set(rows) == {"face0", "face1", "broken"}
    for sid in ("face0", "face1"):
        r = rows[sid]
        assert r["status"] == "done" and r["stage_reached"] == "eval" and r["error"] == ""
        assert all(float(r[f"{s}_s"]) > 0 for s in STAGES)
        assert float(r["psnr_db"]) > 0 and float(r["disp_std"]) > 0
        assert r["normal_error_ratio"] != "" and r["displacement_correlation"] != ""  # ground truth scored
    broken = rows["broken"]
    assert broken["status"] == "failed" and broken["stage_reached"] == ""
    assert "broken/mesh.obj" in broken["error"] and "out of range" in broken["error"]
    assert "broken: preprocess:" in capsys.readouterr().out
    md = (out / "summary.md").read_text()
    assert "2 done, 1 failed (of 3)" in md and "out of range" in md
    from pbidr.utils.images import read_image

    assert read_image(out / "overview.png").shape[0] >= 2 * 256  # 3 tiles in 2 rows
    assert not (subject_paths(out, "broken").scan).exists()  # nothing half-written

    # the same command again: nothing that finished runs again; the broken one fails again
    before = {sid: _stage_times(out, sid) for sid in ("face0", "face1")}
    assert _batch(subjects_root, out, "--engine", "ray") == 1
    assert {sid: _stage_times(out, sid) for sid in ("face0", "face1")} == before


def test_killed_run_resumes_without_redoing_finished_stages(subjects_root, tmp_path, local_ray):
    """Kill a batch (SIGKILL, no chance to clean up) while the second subject trains; the rerun (Ray
    engine) leaves every finished stage alone and continues the training from its checkpoint."""
    inputs = tmp_path / "list.txt"
    inputs.write_text("\n".join(str(subjects_root / "inputs" / f"face{i}") for i in (0, 1)) + "\n")
    out = tmp_path / "out"
    args = ["--inputs", str(inputs), "--out", str(out), "--conf", str(subjects_root / "tiny.conf"), *TINY_ARGS,
            "--iters", "60"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pbidr.commands", "batch", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latest = subject_paths(out, "face1").run / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 120
    try:
        while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the batch ended before it could be killed: {proc.stderr.read()}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = _stage_times(out, "face0")
    assert [first[s][2] for s in STAGES] == ["done"] * 3
    second = _stage_times(out, "face1")
    assert second["preprocess"][2] == "done" and second["train"][2] == "running" and "eval" not in second

    assert main(["batch", *args, "--engine", "ray"]) == 0
    assert _stage_times(out, "face0") == first
    after = _stage_times(out, "face1")
    assert after["preprocess"] == second["preprocess"]
    assert after["train"][2] == after["eval"][2] == "done"
    status = json.loads(subject_paths(out, "face1").status.read_text())
    assert status["stages"]["train"]["resumed_from"] >= 5 and status["stages"]["train"]["step"] == 60
    assert _rows(out)["face1"]["stage_reached"] == "eval"
