"""End-to-end training on tiny data: loss goes down, checkpoints, exact resume, bad inputs."""

import json

import numpy as np
import pytest
import torch

from pbidr.commands.main import main
from pbidr.preprocess.pipeline import preprocess
from pbidr.geometry.cameras import Rig
from pbidr.preprocess.sample import make_sample
from pbidr.model.render import render_camera
from pbidr.training.trainer import Trainer

TINY = """
train { batch_size = 128, iters = 30, plot_freq = 0, plot_res = 32, checkpoint_freq = 10, learning_rate = 5.0e-4 }
model {
  feature_vector_size = 8
  sdf_network { dims = [32, 32], skip_in = [], multires = 2 }
  diffuse_network { dims = [8], multires = 0 }
  specular_network { dims = [8], multires_view = 0, multires_normal = 0 }
  albedo_network { dims = [16], multires = 0 }
  ray_tracer { n_steps = 16, n_secant_steps = 4 }
}
"""


@pytest.fixture(scope="module")
def tiny_scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    make_sample(root / "raw", grid=(60, 80), texture_size=128)
    preprocess(root / "raw", root / "scan", Rig(yaw=3, yaw_angle=30, res=64), progress=False)
    (root / "tiny.conf").write_text(TINY)
    return root


def _train(root, run, *extra):
    return main(["train", "--data", str(root / "scan"), "--exp-dir", str(run), "--conf", str(root / "tiny.conf"),
                 "--device", "cpu", "--quiet", *extra])


def _log_losses(run):
    rows = [line.split() for line in (run / "log.txt").read_text().splitlines() if line.startswith("step ")]
    return [float(r[r.index("rgb") + 1]) for r in rows]


def _masked_l1(trainer):
    """Mean L1 colour error of view 0 over its mask (white where the SDF surface is missed)."""
    view = render_camera(trainer.model, trainer.sampler.coarse, trainer.data.cameras[0], trainer.device)
    mask = trainer.data.masks[0]
    return float(np.abs(view.rgb - trainer.data.images[0])[mask].mean())


def test_tiny_run_lowers_rgb_loss_and_checkpoints(tiny_scan, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_scan / "scan", run, tiny_scan / "tiny.conf", {"train.iters": 60}, progress=False)
    before = _masked_l1(trainer)
    result = trainer.run()
    after = _masked_l1(trainer)
    assert result.step == 60 and after < 0.85 * before, (before, after)
    assert len(_log_losses(run)) == 6
    ckpt = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 60
    for key in ("model", "optimizer", "scheduler", "alpha", "rng", "conf"):
        assert key in ckpt
    assert (run / "run.conf").is_file() and json.loads((run / "run.json").read_text())["n_views"] == 3
    assert list((run / "plots").glob("*.png")) and list((run / "tb").iterdir())


def test_resume_is_exact(tiny_scan, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(tiny_scan, straight, "--iters", "10") == 0
    assert _train(tiny_scan, split, "--iters", "5") == 0
    assert _train(tiny_scan, split, "--iters", "10", "--resume") == 0
    a = torch.load(straight / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(split / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def _fails(capsys, code, *words):
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w.lower() in err.lower(), err


def test_bad_inputs(tiny_scan, tmp_path, capsys):
    conf = tiny_scan / "tiny.conf"
    # missing scan dir
    _fails(capsys, main(["train", "--data", str(tmp_path / "nope"), "--exp-dir", str(tmp_path / "r1"),
                         "--conf", str(conf), "--quiet"]), "nope")
    # conf key typo
    bad = tmp_path / "bad.conf"
    bad.write_text("train { batchsize = 12 }")
    _fails(capsys, main(["train", "--data", str(tiny_scan / "scan"), "--exp-dir", str(tmp_path / "r2"),
                         "--conf", str(bad), "--quiet"]), "batchsize", "bad.conf")
    # cameras / images count mismatch
    import shutil
    scan2 = tmp_path / "scan2"
    shutil.copytree(tiny_scan / "scan", scan2)
    (scan2 / "image" / "003.png").unlink()
    (scan2 / "mask" / "003.png").unlink()
    _fails(capsys, main(["train", "--data", str(scan2), "--exp-dir", str(tmp_path / "r3"), "--conf", str(conf),
                         "--quiet"]), "2 images", "meta.json")
    # an existing run is refused without --resume, and a corrupt checkpoint is named
    run = tmp_path / "run"
    assert _train(tiny_scan, run, "--iters", "2") == 0
    capsys.readouterr()
    _fails(capsys, _train(tiny_scan, run, "--iters", "4"), "--resume")
    for ckpt in (run / "checkpoints").glob("*.pt"):  # every checkpoint corrupt: nothing to fall back on
        ckpt.write_bytes(b"garbage")
    _fails(capsys, _train(tiny_scan, run, "--iters", "4", "--resume"), "latest.pt", "corrupt")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_resume_refuses_a_conf_that_changes_the_run(tiny_scan, tmp_path, capsys):
    """--resume keeps the checkpoint's conf: another --conf/--preset/--set that changes it is refused with
    one line naming the keys; the run's length may change (with a note), and without --conf/--preset the
    run's own conf is kept (not the default preset's)."""
    run = tmp_path / "run"
    assert _train(tiny_scan, run, "--iters", "2") == 0
    capsys.readouterr()
    ckpt = (run / "checkpoints" / "latest.pt").read_bytes()

    def plain(*extra):  # no --conf: the run's own conf
        return main(["train", "--exp-dir", str(run), "--device", "cpu", "--quiet", "--resume", *extra])

    _fails(capsys, plain("--set", "model.sdf_network.dims=[8, 8]"), "model.sdf_network.dims", "([32, 32] -> [8, 8])",
           "--resume")
    _fails(capsys, plain("--set", "train.learning_rate=0.5"), "train.learning_rate", "--overwrite")
    _fails(capsys, main(["train", "--exp-dir", str(run), "--preset", "paper", "--device", "cpu", "--quiet",
                         "--resume"]), "train.batch_size (128 -> 2048)", " more;")
    _fails(capsys, _train(tiny_scan, run, "--resume", "--seed", "3"), "train.seed (0 -> 3)")
    assert (run / "checkpoints" / "latest.pt").read_bytes() == ckpt  # refused before any step
    assert plain("--iters", "3") == 0
    assert "resuming with train.iters = 3 (the run had 2)" in capsys.readouterr().err
    assert torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)["step"] == 3
    assert _train(tiny_scan, run, "--resume", "--iters", "4") == 0  # the same --conf, a longer run
