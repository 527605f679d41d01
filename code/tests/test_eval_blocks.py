"""Eval building blocks on exact answers: marching cubes of a sphere SDF, displacement onto a larger
sphere, midpoint subdivision with a UV seam, UV bake/read-back, masked PSNR, clay render silhouette."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from pbidr.errors import PbidrError
from pbidr.evaluation.displacement import displace_along_normals, subdivide_midpoint
from pbidr.evaluation.marching_cubes import extract_level_set, guide_points_from_mesh
from pbidr.evaluation.metrics import json_safe, masked_psnr
from pbidr.evaluation.shaded import render_shaded, side_by_side
from pbidr.evaluation.uv_maps import rasterize_uv, read_png16, sample_uv_map, texel_uv, write_png16
from pbidr.geometry.cameras import Rig
from pbidr.io.mesh import TexturedMesh

RADIUS = 0.5


def sphere_sdf(points: torch.Tensor) -> torch.Tensor:
    return points.norm(dim=1) - RADIUS


def as_trimesh(ls) -> trimesh.Trimesh:
    return trimesh.Trimesh(ls.vertices, ls.faces, process=False)


# ---------------------------------------------------------------------------------------------
# Marching cubes


@pytest.mark.parametrize("resolution", [64, 97])
def test_marching_cubes_sphere_within_a_voxel(resolution):
    ls = extract_level_set(sphere_sdf, resolution=resolution)
    voxel = ls.stats["voxel_size"]
    assert voxel == pytest.approx(2.0 / resolution)
    assert ls.stats["grid_shape"] == [resolution + 1] * 3
    r = np.linalg.norm(ls.vertices, axis=1)
    assert np.abs(r - RADIUS).max() < voxel
    mesh = as_trimesh(ls)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward normals (toward +sdf)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.02)
    assert ls.stats["n_sdf_evals"] < ls.stats["dense_evals"] / 3  # coarse-to-fine pruning


def test_marching_cubes_non_cubic_bounds():
    ls = extract_level_set(sphere_sdf, resolution=50, bounds=((-0.6, -0.55, -1.0), (0.6, 0.55, 1.0)))
    voxel = ls.stats["voxel_size"]
    assert voxel == pytest.approx(2.0 / 50)
    assert ls.stats["grid_shape"][2] == 51
    assert np.abs(np.linalg.norm(ls.vertices, axis=1) - RADIUS).max() < voxel
    assert as_trimesh(ls).is_watertight


@pytest.mark.parametrize("lipschitz", [None, 1.5])
def test_narrow_band_matches_dense(lipschitz):
    dense = extract_level_set(sphere_sdf, resolution=97, lipschitz=None)
    assert dense.stats["n_sdf_evals"] == dense.stats["dense_evals"]
    ico = trimesh.creation.icosphere(subdivisions=3, radius=RADIUS)
    guide = guide_points_from_mesh(ico.vertices, ico.faces, spacing=0.01)
    band = extract_level_set(sphere_sdf, resolution=97, guide_points=guide, band=0.03, lipschitz=lipschitz)
    assert band.stats["n_sdf_evals"] < dense.stats["dense_evals"] / 3
    assert len(band.faces) == len(dense.faces) and len(band.vertices) == len(dense.vertices)
    d, _ = cKDTree(dense.vertices).query(band.vertices)
    assert d.max() < 1e-9
    mesh = as_trimesh(band)
    assert mesh.is_watertight and mesh.volume > 0


def blobs(points: torch.Tensor) -> torch.Tensor:
    """Not an SDF: an iso-surface of Gaussian blobs with saddles and thin necks (ambiguous cells)."""
    g = torch.Generator().manual_seed(3)
    centres = (torch.rand(12, 3, generator=g) - 0.5) * 0.9
    d2 = ((points[:, None, :] - centres[None].to(points)) ** 2).sum(-1)
    return 0.35 - torch.exp(-d2 / 0.02).sum(1)


def test_blocks_stitch_into_the_single_block_mesh():
    """Small blocks give the same mesh as one block: seam vertices merge, nothing is lost."""
    whole = extract_level_set(blobs, resolution=61, lipschitz=None, block=64)
    assert whole.stats["n_blocks"] == 1
    tiled = extract_level_set(blobs, resolution=61, lipschitz=None, block=7)
    assert tiled.stats["n_blocks"] > 50
    assert len(tiled.faces) == len(whole.faces) and len(tiled.vertices) == len(whole.vertices)
    d, _ = cKDTree(whole.vertices).query(tiled.vertices)
    assert d.max() < 1e-6  # skimage places vertices in float32 block coordinates
    a, b = as_trimesh(whole), as_trimesh(tiled)
    assert a.is_watertight and b.is_watertight
    assert b.volume == pytest.approx(a.volume, rel=1e-6)


def test_marching_cubes_errors():
    with pytest.raises(PbidrError, match="no zero level set"):
        extract_level_set(lambda p: p.norm(dim=1) + 1.0, resolution=16)
    with pytest.raises(PbidrError, match="at least 8"):
        extract_level_set(sphere_sdf, resolution=4)
    with pytest.raises(PbidrError, match="together"):
        extract_level_set(sphere_sdf, resolution=16, band=0.1)


def test_guide_points_spacing():
    ico = trimesh.creation.icosphere(subdivisions=1, radius=RADIUS)
    pts = guide_points_from_mesh(ico.vertices, ico.faces, spacing=0.02)
    surface = trimesh.sample.sample_surface(ico, 20000, seed=0)[0]
    d, _ = cKDTree(pts).query(surface)
    assert d.max() < 0.02
    assert np.abs(np.linalg.norm(pts, axis=1) - RADIUS).max() < 0.1  # on the (coarse) mesh


# ---------------------------------------------------------------------------------------------
# Displacement and subdivision


def test_displacement_onto_larger_sphere():
    r, d = 0.8, 0.05
    ico = trimesh.creation.icosphere(subdivisions=3, radius=r)
    uv = ico.vertices[:, :2] * 0.5 + 0.5
    mesh = TexturedMesh(vertices=ico.vertices, faces=ico.faces.astype(np.int64), uv=uv,
                        face_uv=ico.faces.astype(np.int64), texture=np.zeros((4, 4, 3), np.uint8))
    sdf_world = lambda p: np.linalg.norm(p, axis=1) - (r + d)  # noqa: E731
    out, disp = displace_along_normals(mesh, sdf_world)
    np.testing.assert_allclose(disp, d, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.vertices - mesh.vertices, axis=1), d, rtol=1e-6)
    assert out.faces is mesh.faces and out.face_uv is mesh.face_uv and out.uv is mesh.uv
    assert out.texture is mesh.texture
    # With radial normals the vertices land on the larger sphere exactly.
    radial = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    out2, _ = displace_along_normals(mesh, sdf_world, normals=radial)
    np.testing.assert_allclose(np.linalg.norm(out2.vertices, axis=1), r + d, rtol=1e-9)


def seam_band(n: int = 8) -> TexturedMesh:
    """An open cylinder: positions wrap around (n per ring), UVs do not (n + 1 columns), so the
    faces at the wrap have a UV seam."""
    ang = 2 * np.pi * np.arange(n) / n
    rings = [np.stack([np.cos(ang), np.sin(ang), np.full(n, z)], 1) for z in (0.0, 1.0)]
    vertices = np.concatenate(rings)
    uv = np.array([[i / n, v] for v in (0.0, 1.0) for i in range(n + 1)])
    faces, face_uv = [], []
    for i in range(n):
        j = (i + 1) % n
        faces += [[i, j, n + j], [i, n + j, n + i]]
        face_uv += [[i, i + 1, n + 1 + i + 1], [i, n + 1 + i + 1, n + 1 + i]]
    colors = (np.arange(2 * n)[:, None] * np.array([[10, 5, 1]])).astype(np.uint8)
    return TexturedMesh(vertices=vertices, faces=np.array(faces), uv=uv, face_uv=np.array(face_uv),
                        texture=np.zeros((4, 4, 3), np.uint8), vertex_colors=colors)


CHILD_BARY = np.array([  # corners of the 4 children of a face in the parent's barycentrics
    [[1, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]],
    [[0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5]],
    [[0.5, 0, 0.5], [0, 0.5, 0.5], [0, 0, 1]],
    [[0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]],
])


def test_subdivide_midpoint_counts_seams_and_colours():
    mesh = seam_band(8)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    n_edges = len(tm.edges_unique)
    n_uv_edges = len(np.unique(np.sort(mesh.face_uv[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1), axis=0))
    assert n_uv_edges == n_edges + 1  # the seam edge exists twice in UV
    sub = subdivide_midpoint(mesh)
    assert len(sub.vertices) == len(mesh.vertices) + n_edges
    assert len(sub.faces) == 4 * len(mesh.faces)
    assert len(sub.uv) == len(mesh.uv) + n_uv_edges
    assert len(np.unique(np.round(sub.vertices, 12), axis=0)) == len(sub.vertices)  # no cracks
    # Every child corner is the parent's barycentric blend, in positions and in UVs.
    parent_v = mesh.vertices[mesh.faces]  # (F, 3, 3)
    parent_uv = mesh.uv[mesh.face_uv]
    want_v = np.einsum("cij,fjk->fcik", CHILD_BARY, parent_v).reshape(-1, 3, 3)
    want_uv = np.einsum("cij,fjk->fcik", CHILD_BARY, parent_uv).reshape(-1, 3, 2)
    np.testing.assert_allclose(sub.vertices[sub.faces], want_v, atol=1e-12)
    np.testing.assert_allclose(sub.uv[sub.face_uv], want_uv, atol=1e-12)
    # The seam edge (positions 0 and n) has one position midpoint but two UV midpoints (u = 0, 1).
    seam_mid = np.array([1.0, 0.0, 0.5])
    assert np.sum(np.all(np.isclose(sub.vertices, seam_mid), axis=1)) == 1
    mid_uvs = sub.uv[np.unique(sub.face_uv[np.all(np.isclose(sub.vertices[sub.faces], seam_mid), axis=2)])]
    assert sorted(mid_uvs[:, 0].tolist()) == [0.0, 1.0]
    # Orientation kept, manifold, colours averaged.
    sub_tm = trimesh.Trimesh(sub.vertices, sub.faces, process=False)
    assert sub_tm.is_winding_consistent
    e = np.sort(mesh.faces[:, [0, 1]], axis=1)[0]
    k = np.argmin(np.linalg.norm(sub.vertices - mesh.vertices[e].mean(0), axis=1))
    np.testing.assert_array_equal(sub.vertex_colors[k], np.round(mesh.vertex_colors[e].mean(0)).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# UV maps


def grid_chart(n: int = 24, mirrored: bool = False) -> TexturedMesh:
    """A curved sheet whose UV chart covers [0.1, 0.9]^2 (mirrored in u: clockwise UV triangles)."""
    s = np.linspace(0.0, 1.0, n + 1)
    x, y = np.meshgrid(s, s, indexing="xy")
    x, y = x.ravel(), y.ravel()
    vertices = np.stack([x, y, 0.2 * np.sin(3 * x) * np.cos(2 * y)], 1)
    uv = np.stack([0.1 + 0.8 * (1 - x if mirrored else x), 0.1 + 0.8 * y], 1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return TexturedMesh(vertices=vertices, faces=faces, uv=uv, face_uv=faces.copy())


@pytest.mark.parametrize("mirrored", [False, True])
def test_uv_bake_linear_function_exactly(mirrored):
    mesh = grid_chart(mirrored=mirrored)
    values = np.stack([2.0 * mesh.uv[:, 0] - 3.0 * mesh.uv[:, 1] + 0.5, mesh.uv[:, 1]], 1)
    uv_map, coverage = rasterize_uv(mesh, values, (128, 160), dilate=4)
    assert uv_map.shape == (128, 160, 2) and uv_map.dtype == np.float32
    # Coverage is the chart's square: texel centres inside [0.1, 0.9]^2.
    tuv = texel_uv((128, 160)).reshape(128, 160, 2)
    inside = np.all((tuv > 0.1 + 1e-6) & (tuv < 0.9 - 1e-6), axis=2)
    assert np.array_equal(coverage, inside)
    rng = np.random.default_rng(0)
    q = rng.uniform(0.12, 0.88, size=(2000, 2))
    got = sample_uv_map(uv_map, q)
    want = np.stack([2.0 * q[:, 0] - 3.0 * q[:, 1] + 0.5, q[:, 1]], 1)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Dilation pads a ring around the chart; beyond it stays 0.
    assert np.all(uv_map[~coverage][:, 1] >= 0)
    assert np.all(uv_map[0, 0] == 0)


def test_uv_bake_smooth_function_round_trip():
    mesh = grid_chart(n=32)
    values = np.sin(2 * mesh.vertices[:, 0]) * np.cos(3 * mesh.vertices[:, 1])
    uv_map, _ = rasterize_uv(mesh, values, (256, 256))
    interior = np.all((mesh.uv > 0.11) & (mesh.uv < 0.89), axis=1)  # bilinear reads stay in the chart
    got = sample_uv_map(uv_map[..., 0], mesh.uv[interior])
    assert np.abs(got - values[interior]).max() < 2e-3


def test_png16_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.normal(size=(20, 30, 3))
    info = write_png16(tmp_path / "map.png", img, lo=-3.0, hi=3.0)
    assert info["offset"] == -3.0 and info["scale"] == pytest.approx(6.0 / 65535)
    back = read_png16(tmp_path / "map.png", info["lo"], info["hi"])
    np.testing.assert_allclose(back, np.clip(img, -3, 3), atol=info["scale"] / 2 + 1e-12)  # RGB order kept
    grey = write_png16(tmp_path / "grey.png", img[..., 0])
    back = read_png16(tmp_path / "grey.png", grey["lo"], grey["hi"])
    assert back.shape == (20, 30)
    np.testing.assert_allclose(back, img[..., 0], atol=grey["scale"] / 2 + 1e-12)


# ---------------------------------------------------------------------------------------------
# Metrics and renders


def test_masked_psnr():
    rng = np.random.default_rng(2)
    gt = rng.uniform(0.2, 0.8, size=(256, 256, 3))
    mask = np.zeros((256, 256), bool)
    mask[30:230, 40:220] = True
    assert masked_psnr(gt, gt, mask) == math.inf
    sigma = 0.05
    pred = gt + rng.normal(scale=sigma, size=gt.shape)
    pred[~mask] = 0.0  # outside the mask does not count
    assert masked_psnr(pred, gt, mask) == pytest.approx(10 * math.log10(1 / sigma**2), abs=0.1)
    with pytest.raises(PbidrError, match="empty"):
        masked_psnr(pred, gt, np.zeros_like(mask))
    assert json_safe({"psnr": [math.inf, np.float32(1.5), -math.inf, math.nan]}) == {"psnr": ["inf", 1.5, "-inf", "nan"]}


def test_render_shaded_sphere_silhouette():
    rig = Rig(yaw=1, res=161)
    cam = rig.cameras()[0]
    ico = trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)
    img = render_shaded(ico.vertices, ico.faces, cam)
    assert img.shape == (161, 161, 3) and img.dtype == np.uint8
    covered = np.any(img != 255, axis=2)
    f = cam.K[0, 0]
    r_pix = f * math.tan(math.asin(RADIUS / rig.distance))
    rows, cols = np.mgrid[0:161, 0:161]
    dist = np.hypot(cols - cam.K[0, 2], rows - cam.K[1, 2])
    assert covered[dist < r_pix - 1].all()
    assert not covered[dist > r_pix + 1].any()
    # Lit from the upper left: the upper-left of the disk is brighter than the lower right.
    c = int(cam.K[0, 2])
    o = int(r_pix * 0.5)
    assert img[c - o, c - o, 0] > img[c + o, c + o, 0] + 40
    sheet = side_by_side([img, img[::2, ::2]], ["coarse", "detailed"])
    assert sheet.dtype == np.uint8 and sheet.shape[0] >= 161
