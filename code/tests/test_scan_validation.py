"""A damaged scan folder is refused at load, before training starts: one line naming the file."""

import json
import shutil

import numpy as np
import pytest

from pbidr.commands.main import main
from pbidr.geometry.cameras import Rig
from pbidr.preprocess.pipeline import preprocess
from pbidr.preprocess.sample import make_sample
from pbidr.utils.images import read_image, write_png

TINY = "train { batch_size = 64, iters = 2, plot_freq = 0, plot_res = 16 }\n" \
       "model { sdf_network { dims = [16], skip_in = [], multires = 0 } }\n"


@pytest.fixture(scope="module")
def good_scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("scanval")
    make_sample(root / "raw", grid=(30, 40), texture_size=64)
    preprocess(root / "raw", root / "scan", Rig(yaw=3, yaw_angle=30, res=32), progress=False)
    (root / "tiny.conf").write_text(TINY)
    return root


def _break(kind: str, scan):
    if kind == "missing image":
        (scan / "image" / "002.png").unlink()
        return "image/002.png", "missing"
    if kind == "extra image":
        shutil.copy(scan / "image" / "003.png", scan / "image" / "004.png")
        return "mask/004.png", "missing"
    if kind == "extra view":
        shutil.copy(scan / "image" / "003.png", scan / "image" / "004.png")
        shutil.copy(scan / "mask" / "003.png", scan / "mask" / "004.png")
        return "image", "meta.json"
    if kind == "mask size":
        write_png(scan / "mask" / "002.png", np.zeros((16, 16), np.uint8))
        return "mask/002.png", "16x16"
    if kind == "image size":
        write_png(scan / "image" / "003.png", np.zeros((40, 32, 3), np.uint8))
        return "image/003.png", "32x40"
    if kind == "camera count":
        cams = dict(np.load(scan / "cameras.npz"))
        cams["world_mat_3"], cams["scale_mat_3"] = cams["world_mat_2"], cams["scale_mat_2"]
        np.savez(scan / "cameras.npz", **cams)
        return "cameras.npz", "4 cameras"
    if kind == "fewer cameras":
        cams = dict(np.load(scan / "cameras.npz"))
        del cams["world_mat_2"], cams["scale_mat_2"]
        np.savez(scan / "cameras.npz", **cams)
        return "cameras.npz", "world_mat_2"
    if kind == "nan camera":
        cams = dict(np.load(scan / "cameras.npz"))
        cams["world_mat_1"] = cams["world_mat_1"].copy()
        cams["world_mat_1"][0, 0] = np.nan
        np.savez(scan / "cameras.npz", **cams)
        return "cameras.npz", "world_mat_1"
    if kind == "mesh edited":
        text = (scan / "mesh.obj").read_text().replace("\nv ", "\nv 0.5 0.5 0.5\nv ", 1)
        (scan / "mesh.obj").write_text(text)
        return "mesh.obj", "meta.json"
    if kind == "mesh moved":  # same counts, other positions: caught by the checksum
        lines = (scan / "mesh.obj").read_text().split("\n")
        k = next(i for i, line in enumerate(lines) if line.startswith("v "))
        x, y, z = map(float, lines[k].split()[1:4])
        lines[k] = f"v {x + 1.0} {y} {z}"
        (scan / "mesh.obj").write_text("\n".join(lines))
        return "mesh.obj", "sha-256"
    if kind == "unreadable mask":
        (scan / "mask" / "001.png").write_bytes(b"not a png")
        return "mask/001.png", "unreadable"
    raise AssertionError(kind)


KINDS = ["missing image", "extra image", "extra view", "mask size", "image size", "camera count", "fewer cameras",
         "nan camera", "mesh edited", "mesh moved", "unreadable mask"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_scan_is_refused_before_training(good_scan, tmp_path, capsys, kind):
    scan = tmp_path / "scan"
    shutil.copytree(good_scan / "scan", scan)
    words = _break(kind, scan)
    run = tmp_path / "run"
    code = main(["train", "--data", str(scan), "--exp-dir", str(run), "--conf", str(good_scan / "tiny.conf"),
                 "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for w in words:
        assert w.lower() in err.lower(), err
    assert not run.exists()  # refused before anything was written


def test_good_scan_and_idr_scan_without_meta_load(good_scan, tmp_path):
    from pbidr.datasets.scan import load_scan

    assert load_scan(good_scan / "scan").n_views == 3
    scan = tmp_path / "scan"
    shutil.copytree(good_scan / "scan", scan)
    (scan / "meta.json").unlink()  # an IDR scan from elsewhere has no meta.json: still usable
    data = load_scan(scan)
    assert data.n_views == 3 and data.images.shape[1:3] == read_image(scan / "image" / "001.png").shape[:2]
    assert json.loads((good_scan / "scan" / "meta.json").read_text())["mesh"]["sha256"]
