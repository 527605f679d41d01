"""The procedural face sample: determinism, orientation, ground truth, and texture vs geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pbidr.errors import PbidrError
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess import sample as S

GRID = (60, 80)
TEX = 256


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """vertices, uv, faces, face_uv of a triangle OBJ written as ``f v/vt v/vt v/vt``."""
    v, vt, f = [], [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            v.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("vt "):
            vt.append([float(x) for x in line.split()[1:3]])
        elif line.startswith("f "):
            f.append([[int(i) for i in c.split("/")[:2]] for c in line.split()[1:]])
    f = np.array(f, dtype=np.int64) - 1
    return np.array(v), np.array(vt), f[..., 0], f[..., 1]


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "face"
    info = S.make_sample(out, seed=0, grid=GRID, texture_size=TEX)
    assert info.n_faces == 2 * (GRID[0] - 1) * (GRID[1] - 1)
    return out


def test_files_and_metadata(sample_dir):
    for name in ["mesh.obj", "mesh.mtl", "mesh.png", "gt_detailed.obj", "gt_displacement.npy",
                 "gt_displacement_uv.npy", "albedo_marks_uv.png", "face_region_uv.png", "albedo.png", "sample.json"]:
        assert (sample_dir / name).is_file(), name
    meta = json.loads((sample_dir / "sample.json").read_text())
    assert meta["seed"] == 0 and meta["units"] == "mm"
    assert meta["n_faces"] == 2 * 59 * 79 and meta["n_vertices"] == 60 * 80
    assert np.isclose(np.linalg.norm(meta["light_direction"]), 1.0)
    assert "map_Kd mesh.png" in (sample_dir / "mesh.mtl").read_text()
    assert np.asarray(Image.open(sample_dir / "mesh.png")).shape == (TEX, TEX, 3)
    region = np.asarray(Image.open(sample_dir / "face_region_uv.png"))
    assert region.dtype == np.uint8 and region[TEX // 2, TEX // 2] == 255 and region[0, 0] == 0


def test_same_seed_gives_identical_files_and_replaces_folder(sample_dir, tmp_path):
    again = tmp_path / "face"
    S.make_sample(again, seed=1, grid=GRID, texture_size=TEX)
    (again / "stale.txt").write_text("from an earlier run")
    with pytest.raises(PbidrError, match="--overwrite"):  # an earlier sample is replaced only when asked
        S.make_sample(again, seed=0, grid=GRID, texture_size=TEX)
    assert (again / "stale.txt").exists()
    S.make_sample(again, seed=0, grid=GRID, texture_size=TEX, overwrite=True)
    assert not (again / "stale.txt").exists()  # the folder is replaced as a whole
    names = sorted(p.name for p in sample_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (sample_dir / name).read_bytes() == (again / name).read_bytes(), name


def test_other_seed_moves_freckles_and_noise(sample_dir, tmp_path):
    other = tmp_path / "face1"
    S.make_sample(other, seed=1, grid=GRID, texture_size=TEX)
    marks0 = np.asarray(Image.open(sample_dir / "albedo_marks_uv.png")) > 0
    marks1 = np.asarray(Image.open(other / "albedo_marks_uv.png")) > 0
    assert (marks0 != marks1).mean() > 0.01
    d0 = np.load(sample_dir / "gt_displacement_uv.npy")
    d1 = np.load(other / "gt_displacement_uv.npy")
    assert np.abs(d0 - d1).max() > 0.01
    # The coarse geometry is the same for every seed.
    assert (sample_dir / "mesh.obj").read_bytes() == (other / "mesh.obj").read_bytes()


def test_default_grid_has_enough_faces_and_face_proportions():
    nu, nv = S.DEFAULT_GRID
    faces = S.grid_faces(nu, nv)
    assert len(faces) >= 50_000
    assert faces.max() == nu * nv - 1
    gu, gv = np.meshgrid(np.linspace(0, 1, nu), np.linspace(0, 1, nv))
    p = S.coarse_surface(gu.reshape(-1), gv.reshape(-1))
    width, height, depth = p.max(0) - p.min(0)
    assert 130 < width < 170 and 180 < height < 220 and 70 < depth < 130


def test_faces_look_toward_plus_z_with_y_up(sample_dir):
    v, uv, f, fuv = _read_obj(sample_dir / "mesh.obj")
    tri = v[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area
    c = tri.mean(axis=1)
    centre = (np.abs(c[:, 0]) < 30) & (np.abs(c[:, 1]) < 40)
    mean = n[centre].sum(0)
    assert mean[2] / np.linalg.norm(mean) > 0.9
    # Every face of this front-facing sheet points toward the viewer in front.
    assert (n[:, 2] > 0).mean() > 0.99
    # +y is up: the forehead (high v) is above the chin (low v).
    nu, nv = GRID
    forehead = v[(nv * 9 // 10) * nu + nu // 2]
    chin = v[(nv // 10) * nu + nu // 2]
    assert forehead[1] > chin[1] + 100
    # The nose tip is the front-most point of the centre.
    assert v[:, 2].argmax() in set(range((nv // 3) * nu, (2 * nv // 3) * nu))
    # Per-vertex UV is the grid parameter.
    np.testing.assert_array_equal(f, fuv)
    np.testing.assert_allclose(S.coarse_surface(uv[:, 0], uv[:, 1]), v, atol=1e-4)


def test_gt_detailed_is_coarse_plus_displacement_along_normals(sample_dir):
    v, uv, f, fuv = _read_obj(sample_dir / "mesh.obj")
    vd, uvd, fd, fuvd = _read_obj(sample_dir / "gt_detailed.obj")
    np.testing.assert_array_equal(f, fd)
    np.testing.assert_array_equal(fuv, fuvd)
    np.testing.assert_array_equal(uv, uvd)
    disp = np.load(sample_dir / "gt_displacement.npy")
    assert disp.shape == (len(v),)
    normals = TexturedMesh(v, f).vertex_normals()
    np.testing.assert_allclose(vd - v, disp[:, None] * normals, atol=5e-5)
    np.testing.assert_allclose(disp, S.displacement_uv(uv[:, 0], uv[:, 1], seed=0), atol=1e-4)  # vt has 7 decimals
    assert 0.3 < np.abs(disp).max() < 3.0
    nu, nv = GRID
    border = np.zeros((nv, nu), dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    assert np.abs(disp[border.reshape(-1)]).max() < 1e-9


def test_displacement_uv_map_is_in_texture_layout(sample_dir):
    d = np.load(sample_dir / "gt_displacement_uv.npy")
    assert d.dtype == np.float32 and d.shape == (TEX, TEX)
    u, v = S.texel_uv(TEX)
    np.testing.assert_allclose(d, S.displacement_uv(u, v, seed=0), atol=1e-6)
    # Row 0 is v = 1 (the top of the face): the forehead wrinkles are in the upper rows.
    col = d[:, TEX // 2]
    upper = col[int(0.14 * TEX) : int(0.24 * TEX)]  # v in [0.76, 0.86]
    lower = col[int(0.76 * TEX) : int(0.86 * TEX)]
    assert upper.std() > 0.2 and lower.std() < 0.1


def test_freckles_are_albedo_only(sample_dir):
    marks = np.asarray(Image.open(sample_dir / "albedo_marks_uv.png")) == 255
    assert 0.001 < marks.mean() < 0.1
    region = np.asarray(Image.open(sample_dir / "face_region_uv.png")) == 255
    assert marks[region].sum() > 0.9 * marks.sum()
    albedo = _gray(sample_dir / "albedo.png")
    # Dark in the albedo compared with the unmarked skin of the same band of rows.
    rows = np.nonzero(marks.any(axis=1))[0]
    band = np.zeros_like(marks)
    band[rows.min() : rows.max() + 1, :] = True
    skin = band & region & ~marks
    assert albedo[marks].mean() < albedo[skin].mean() - 15
    # ...but nothing in the geometry: the displacement on freckles is like the displacement around them.
    d = np.load(sample_dir / "gt_displacement_uv.npy")
    near = band & region & ~marks
    assert abs(d[marks].mean() - d[near].mean()) < 0.1
    assert d[marks].std() < 2.0 * d[near].std() + 0.02


def test_texture_is_albedo_times_detailed_shading(sample_dir):
    """Rebuild the detailed surface's normals from the stored ground truth and check the texture's
    shading (texture / albedo) follows them, and follows the detail beyond the coarse shape."""
    texture = _gray(sample_dir / "mesh.png")
    albedo = _gray(sample_dir / "albedo.png")
    region = np.asarray(Image.open(sample_dir / "face_region_uv.png")) == 255
    d = np.load(sample_dir / "gt_displacement_uv.npy").astype(np.float64)
    u, v = S.texel_uv(TEX)
    coarse = S.coarse_surface(u, v)
    n_coarse = S.coarse_normal(u, v)
    light = np.asarray(json.loads((sample_dir / "sample.json").read_text())["light_direction"])

    def ndotl(p):
        n = np.cross(np.gradient(p, axis=1), -np.gradient(p, axis=0))  # d/du x d/dv
        return (n / np.linalg.norm(n, axis=-1, keepdims=True)) @ light

    detailed = ndotl(coarse + d[..., None] * n_coarse)
    smooth = ndotl(coarse)
    shading = texture / np.maximum(albedo, 1.0)
    inner = region & (albedo > 40)
    assert np.corrcoef(shading[inner], detailed[inner])[0, 1] > 0.95
    # The detail is visible: the shading's departure from the coarse shading follows the detail's.
    forehead = inner & (np.abs(d) > 0.0) & (v > 0.72) & (v < 0.9) & (np.abs(u - 0.5) < 0.2)
    fine_shading = shading[forehead] / np.maximum(np.maximum(smooth[forehead], 0) * S.DIFFUSE + S.AMBIENT, 1e-6)
    fine_normal = detailed[forehead] - smooth[forehead]
    assert np.corrcoef(fine_shading, fine_normal)[0, 1] > 0.8
    assert fine_shading.std() > 0.015
