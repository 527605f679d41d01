import json
import subprocess
import sys

import numpy as np
import pytest

from pbidr.commands.main import main
from pbidr.geometry.cameras import load_cameras_npz
from pbidr.utils.images import read_image

SMALL = ["--yaw", "3", "--pitch", "2", "--res", "48", "--quiet"]


def test_preprocess_writes_a_scan(sphere_raw, tmp_path):
    out = tmp_path / "scan0"
    assert main(["preprocess", "--input", str(sphere_raw), "--output", str(out), *SMALL]) == 0
    images = sorted((out / "image").glob("*.png"))
    masks = sorted((out / "mask").glob("*.png"))
    assert [p.name for p in images] == [f"{i:03d}.png" for i in range(1, 6)]
    assert [p.name for p in masks] == [p.name for p in images]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_views"] == 5 and meta["renderer"] == "embree"
    cams, scale = load_cameras_npz(out / "cameras.npz", 5, 48, 48)
    np.testing.assert_allclose(scale, meta["normalisation"]["scale_mat"])
    for img_path, mask_path in zip(images, masks):
        img, mask = read_image(img_path), read_image(mask_path, grey=True)
        assert img.shape == (48, 48, 3) and mask.shape == (48, 48)
        assert set(np.unique(mask)) <= {0, 255}
        assert np.all(img[mask == 0] == 255)  # white background outside the coverage mask
        assert 0.1 < (mask > 0).mean() < 0.9
    for name in ("mesh.obj", "mesh.mtl", "mesh.png", "views.png"):
        assert (out / name).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def _fails(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w.lower() in err.lower(), err
    return err


def test_bad_inputs_leave_nothing(tmp_path, capsys):
    out = tmp_path / "scan"
    raw = tmp_path / "raw"
    raw.mkdir()
    # missing input
    _fails(capsys, ["preprocess", "-i", str(tmp_path / "nope.obj"), "-o", str(out), *SMALL], "nope.obj")
    # NaN vertex
    (raw / "mesh.obj").write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv nan 1 0 1 0 0\nf 1 2 3\n")
    _fails(capsys, ["preprocess", "-i", str(raw), "-o", str(out), *SMALL], "mesh.obj")
    # index out of range
    (raw / "mesh.obj").write_text("v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 0 1 0 0\nf 1 2 7\n")
    _fails(capsys, ["preprocess", "-i", str(raw), "-o", str(out), *SMALL], "mesh.obj")
    # no texture and no colours
    (raw / "mesh.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    _fails(capsys, ["preprocess", "-i", str(raw), "-o", str(out), *SMALL], "mesh.obj")
    # missing texture file
    (raw / "mesh.obj").write_text("mtllib mesh.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
                                  "usemtl m\nf 1/1 2/2 3/3\n")
    (raw / "mesh.mtl").write_text("newmtl m\nmap_Kd skin.png\n")
    _fails(capsys, ["preprocess", "-i", str(raw), "-o", str(out), *SMALL], "skin.png")
    # empty mesh
    (raw / "mesh.obj").write_text("# nothing\n")
    _fails(capsys, ["preprocess", "-i", str(raw), "-o", str(out), *SMALL], "mesh.obj")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_failed_run_keeps_earlier_scan(sphere_raw, tmp_path, capsys):
    out = tmp_path / "scan"
    assert main(["preprocess", "-i", str(sphere_raw), "-o", str(out), *SMALL]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (sphere_raw / "mesh.png").write_bytes(b"not a png")
    _fails(capsys, ["preprocess", "-i", str(sphere_raw), "-o", str(out), "--overwrite", *SMALL], "mesh.png")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_bad_rig_and_renderer(sphere_raw, tmp_path, capsys):
    out = tmp_path / "scan"
    _fails(capsys, ["preprocess", "-i", str(sphere_raw), "-o", str(out), "--yaw", "0", "--quiet"], "view")
    _fails(capsys, ["preprocess", "-i", str(sphere_raw), "-o", str(out), "--renderer", "blender", "--quiet"],
           "blender")
    assert not out.exists()


def test_pytorch3d_missing_is_a_clear_error(sphere_raw, tmp_path, capsys):
    try:
        import pytorch3d  # noqa: F401
        pytest.skip("pytorch3d is installed")
    except ImportError:
        pass
    _fails(capsys, ["preprocess", "-i", str(sphere_raw), "-o", str(tmp_path / "s"), "--renderer", "pytorch3d",
                    *SMALL], "pytorch3d", "install")


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pbidr.commands", "preprocess", "-i", str(tmp_path / "missing"),
                        "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode != 0 and "missing" in r.stderr and r.stderr.count("\n") == 1
