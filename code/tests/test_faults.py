"""Fault injection: SIGKILL at random moments (training, checkpoint write, preprocess, eval), corrupt
checkpoints and concurrent runs. Nothing earlier is lost and the rerun completes; a training killed
and resumed any number of times ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pbidr.commands.main import main
from pbidr.geometry.cameras import Rig
from pbidr.preprocess.pipeline import preprocess
from pbidr.preprocess.sample import make_sample
from pbidr.training.trainer import Trainer
from pbidr.utils.outputs import stage_done

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL")

STEPS = 40
TINY = f"""
train {{ batch_size = 64, iters = {STEPS}, plot_freq = 0, plot_res = 16, checkpoint_freq = 10,
        checkpoint_seconds = 0.3, keep_checkpoints = 2, learning_rate = 5.0e-4 }}
model {{
  feature_vector_size = 4
  sdf_network {{ dims = [32, 32], skip_in = [], multires = 2 }}
  diffuse_network {{ dims = [8], multires = 0 }}
  specular_network {{ dims = [8], multires_view = 0, multires_normal = 0 }}
  albedo_network {{ dims = [8], multires = 0 }}
  ray_tracer {{ mode = mesh, n_steps = 12, n_secant_steps = 4, sphere_tracing_iters = 5, line_step_iters = 1,
                band_steps = 6, n_front_steps = 0, n_steps_outside = 8, n_refine_outside = 2 }}
}}
"""

# Runs pbidr in a child; FAULT_AT=<module>:<function>:<n> makes the n-th call of that function write
# half of its output (when it is a torch.save) and SIGKILL the process, i.e. a kill in mid-write.
CHILD = r"""
import importlib, os, signal, sys
spec = os.environ.get("FAULT_AT")
if spec:
    mod_name, fn_name, n = spec.split(":")
    mod = importlib.import_module(mod_name)
    orig, calls = getattr(mod, fn_name), [0]
    def faulty(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(n):
            if fn_name == "save":
                orig(*args, **kwargs)
                path = args[1]
                data = open(path, "rb").read()
                open(path, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*args, **kwargs)
    setattr(mod, fn_name, faulty)
from pbidr.commands.main import main
sys.exit(main(sys.argv[1:]))
"""


def _child(argv, fault=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # as in this process (one_thread): the same float sums
    env.pop("FAULT_AT", None)
    if fault:
        env["FAULT_AT"] = fault
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread is fastest on a busy machine, and parent and children must agree."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny scan, the conf, and the reference: the same training without interruption."""
    root = tmp_path_factory.mktemp("faults")
    make_sample(root / "raw", grid=(30, 40), texture_size=64)
    preprocess(root / "raw", root / "scan", Rig(yaw=3, yaw_angle=30, res=32), progress=False)
    (root / "tiny.conf").write_text(TINY)
    t0 = time.perf_counter()
    Trainer(root / "scan", root / "reference", root / "tiny.conf", progress=False).run()
    root.joinpath("reference_seconds").write_text(str(time.perf_counter() - t0))
    return root


def _weights(run):
    return torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)


def _assert_same_as_reference(world, run):
    a, b = _weights(world / "reference"), _weights(run)
    assert a["step"] == b["step"] == STEPS
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5, rtol=0), k
    assert stage_done(run, "train")


def _train_argv(world, run, *extra):
    return [str(a) for a in ["train", "--data", world / "scan", "--exp-dir", run, "--conf", world / "tiny.conf",
                             "--device", "cpu", "--quiet", *extra]]


def _wait_for_start(run, proc, timeout=60.0):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        log = run / "log.txt"
        if log.exists() and log.read_text().count("start at step") > 0:
            return
        if proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.stderr.read().decode()}")
        time.sleep(0.01)
    raise AssertionError("child did not start training")


def test_sigkill_at_random_moments_then_resume_is_exact(world, tmp_path, capsys):
    rng = np.random.default_rng(11)
    run = tmp_path / "run"
    span = float((world / "reference_seconds").read_text())
    kills = []
    for trial in range(3):
        starts_before = (run / "log.txt").read_text().count("start at step") if run.exists() else 0
        proc = _child(_train_argv(world, run, *(["--resume"] if trial else [])))
        t0 = time.perf_counter()
        while not ((run / "log.txt").exists() and (run / "log.txt").read_text().count("start at step") > starts_before):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.perf_counter() - t0 < 60
            time.sleep(0.01)
        if trial == 0:  # a second training into the same folder refuses while the first runs
            assert main(_train_argv(world, run, "--resume")) == 2
            err = capsys.readouterr().err
            assert f"pid {proc.pid}" in err and len(err.strip().splitlines()) == 1, err
        time.sleep(float(rng.uniform(0.0, 0.25 * span)))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the child finished before the kill: raise STEPS"
        step = _weights(run)["step"] if (run / "checkpoints" / "latest.pt").exists() else 0
        kills.append(step)
        assert not stage_done(run, "train")
    assert main(_train_argv(world, run, "--resume")) == 0  # the stale lock of the killed child is taken over
    _assert_same_as_reference(world, run)
    assert not (run / ".lock").exists()
    print(f"killed at checkpoint steps {kills}")


def test_killed_before_first_checkpoint_resumes_from_step_zero(world, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _child(_train_argv(world, run))
    _wait_for_start(run, proc)
    proc.send_signal(signal.SIGKILL)  # right at the start: no checkpoint yet
    proc.wait()
    assert not (run / "checkpoints" / "latest.pt").exists()
    assert main(_train_argv(world, run)) == 2  # an existing run still needs --resume (or --overwrite)
    assert "--resume" in capsys.readouterr().err
    assert main(_train_argv(world, run, "--resume")) == 0
    assert "no checkpoint yet; starting it from step 0" in capsys.readouterr().err
    _assert_same_as_reference(world, run)


def test_sigkill_during_checkpoint_write_and_corrupt_checkpoints(world, tmp_path, capsys):
    run = tmp_path / "run"
    # torch.save calls: 1 latest@10, 2 step_10, 3 latest@20 -> killed half-way through writing it
    proc = _child(_train_argv(world, run, "--set", "train.checkpoint_seconds=0"), fault="torch:save:3")
    assert proc.wait() == -signal.SIGKILL
    ckpts = run / "checkpoints"
    assert list(ckpts.glob(".*.tmp*")), "the half-written temp file should be there"
    assert _weights(run)["step"] == 10  # the earlier checkpoint is intact (and passes its checksum)
    assert main(_train_argv(world, run, "--resume", "--iters", "30")) == 0
    assert not list(ckpts.glob(".*.tmp*"))
    # a truncated latest.pt and a bit flip in the newest numbered one: the previous numbered one is used
    latest = ckpts / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    newest = sorted(ckpts.glob("step_*.pt"))[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x40
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(_train_argv(world, run, "--resume", "--iters", str(STEPS))) == 0
    err = capsys.readouterr().err
    assert "latest.pt: corrupt" in err and f"{newest.name}: corrupt" in err and "instead" in err, err
    _assert_same_as_reference(world, run)


def test_stale_lock_is_taken_over_and_live_lock_refuses(world, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(f"{os.getppid()}\n")  # a live process (pytest's parent) holds it
    assert main(_train_argv(world, run)) == 2
    assert f"pid {os.getppid()}" in capsys.readouterr().err
    (run / ".lock").write_text(f"{int(dead.stdout)}\n")  # its process is gone: stale
    assert main(_train_argv(world, run, "--iters", "3")) == 0
    assert not (run / ".lock").exists()


def _tree(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigkill_during_preprocess_keeps_the_earlier_scan(world, tmp_path):
    scan = tmp_path / "scan"
    import shutil

    shutil.copytree(world / "scan", scan)
    before = _tree(scan)
    proc = _child(["preprocess", "-i", world / "raw", "-o", scan, "--yaw", "3", "--res", "32", "--quiet",
                   "--overwrite"], fault="pbidr.preprocess.pipeline:write_png:2")
    assert proc.wait() == -signal.SIGKILL
    assert _tree(scan) == before and stage_done(scan, "preprocess")
    assert list(tmp_path.glob(".scan.*.tmp"))  # the killed run's staging folder
    assert main(["preprocess", "-i", str(world / "raw"), "-o", str(scan), "--yaw", "3", "--res", "32", "--quiet",
                 "--overwrite"]) == 0
    assert stage_done(scan, "preprocess") and not list(tmp_path.glob(".scan.*"))


def test_sigkill_during_eval_keeps_the_earlier_eval(world, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world / "reference", run)
    argv = ["eval", "--exp-dir", run, "--mc-resolution", "16", "--no-rendering", "--device", "cpu", "--quiet"]
    assert main([str(a) for a in argv]) == 0
    before = _tree(run / "eval")
    proc = _child([*argv, "--overwrite"], fault="pbidr.utils.atomic:save_npy:1")
    assert proc.wait() == -signal.SIGKILL
    assert _tree(run / "eval") == before and stage_done(run / "eval", "eval")
    assert main([str(a) for a in argv] + ["--overwrite"]) == 0
    assert stage_done(run / "eval", "eval") and not list(run.glob(".eval.*"))
    assert json.loads((run / "eval" / "metrics.json").read_text())["step"] == STEPS
