"""The texel fit (pbidr.detail): the chart, the map's SDF view, the light, the albedo model, seams,
UV-less meshes, the colour sampler and the dense output mesh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbidr.detail.chart import build_chart, texture_colours
from pbidr.detail.fit import FitConfig, DisplacementGrids, detailed_normals, fit_detail, fit_light, seam_pairs
from pbidr.detail.filters import GuidedFilter
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess.sample import grid_faces


def plane_mesh(n: int = 21, size: float = 20.0, split: bool = False, dome: float = 0.0) -> TexturedMesh:
    """A z = 0 plane of n x n vertices over [0, size]^2 mm, normals +z (``dome`` > 0: a spherical cap of
    that radius instead, so the normals vary). ``split``: its left and right halves are two UV islands
    (left in u < 0.45, right in u > 0.55), so the middle column is a seam."""
    t = np.linspace(0.0, 1.0, n)
    gu, gv = np.meshgrid(t, t)
    z = np.zeros(n * n)
    if dome > 0:
        z = np.sqrt(dome**2 - ((gu.ravel() - 0.5) * size) ** 2 - ((gv.ravel() - 0.5) * size) ** 2) - dome
    verts = np.stack([gu.ravel() * size, gv.ravel() * size, z], axis=1)
    faces = grid_faces(n, n)
    uv = np.stack([gu.ravel(), gv.ravel()], axis=1)
    if not split:
        return TexturedMesh(verts, faces, uv=uv, face_uv=faces.copy())
    half = n // 2
    centre_u = verts[faces, 0].mean(axis=1) / size
    left = centre_u < t[half]
    uv_left = np.stack([gu.ravel() * 0.9, gv.ravel()], axis=1)  # u in [0, 0.45] for the left half
    uv_right = np.stack([0.1 + gu.ravel() * 0.9, gv.ravel()], axis=1)  # u in [0.55, 1] for the right half
    uvs = np.concatenate([uv_left, uv_right])
    face_uv = np.where(left[:, None], faces, faces + n * n)
    return TexturedMesh(verts, faces, uv=uvs, face_uv=face_uv)


def test_chart_of_a_plane_has_exact_points_normals_and_tangent_basis():
    mesh = plane_mesh()
    chart = build_chart(mesh, (32, 32))
    assert chart.mask.all()
    u = (np.arange(32) + 0.5) / 32
    np.testing.assert_allclose(chart.points[0, :, 0], u * 20.0, atol=1e-9)  # row 0 is v = 1
    np.testing.assert_allclose(chart.points[0, :, 1], (1 - 0.5 / 32) * 20.0, atol=1e-9)
    np.testing.assert_allclose(chart.normals, np.broadcast_to([0, 0, 1.0], chart.normals.shape), atol=1e-12)
    np.testing.assert_allclose(chart.grad_u[5, 5], [1 / 20.0, 0, 0], atol=1e-12)  # du/dx on a 20 mm plane
    np.testing.assert_allclose(chart.grad_v[5, 5], [0, 1 / 20.0, 0], atol=1e-12)
    assert chart.texel_size == pytest.approx(20.0 / 32)
    assert not chart.interior[0].any() and chart.interior[1:-1, 1:-1].all()


def test_detailed_normals_of_a_tilted_displacement_are_exact():
    """D = a x (mm) on the plane: the detailed surface is z = a x, normal (-a, 0, 1) / |.|."""
    mesh = plane_mesh()
    chart = build_chart(mesh, (32, 32))
    ct = {k: torch.as_tensor(getattr(chart, k), dtype=torch.float64) for k in ("normals", "grad_u", "grad_v")}
    ct["interior"] = torch.as_tensor(chart.interior, dtype=torch.float64)
    a = 0.3
    d = torch.as_tensor(a * chart.points[..., 0])
    n = detailed_normals(ct, d)[chart.interior]
    want = torch.tensor([-a, 0.0, 1.0], dtype=torch.float64) / np.hypot(a, 1.0)
    torch.testing.assert_close(n, want.expand_as(n), atol=1e-6, rtol=0)  # Embree barycentrics are float32


def test_light_fit_recovers_a_clamped_lambert_light():
    rng = np.random.default_rng(0)
    n = rng.normal(size=(20000, 3))
    n[:, 2] = np.abs(n[:, 2]) + 0.3
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    light = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])
    lum = 0.7 * (0.35 + 0.65 * np.maximum(n @ light, 0.0))
    fit = fit_light(torch.as_tensor(n), torch.as_tensor(lum), "lambert")
    info = fit.describe()
    np.testing.assert_allclose(info["direction"], light, atol=1e-6)
    assert info["ambient"] == pytest.approx(0.7 * 0.35, abs=1e-6)
    assert info["diffuse"] == pytest.approx(0.7 * 0.65, abs=1e-6)


def test_guided_filter_keeps_what_is_affine_in_the_guide_and_removes_the_rest():
    rng = np.random.default_rng(1)
    guide = torch.as_tensor(rng.normal(size=(2, 64, 64)))
    weight = torch.ones(64, 64, dtype=torch.float64)
    gf = GuidedFilter(guide, weight, radius=4, eps=1e-8)
    albedo_like = 0.3 + 0.8 * guide[0] - 0.5 * guide[1]  # affine in the guide: kept as albedo
    torch.testing.assert_close(gf.apply(albedo_like), albedo_like, atol=1e-5, rtol=0)
    shading_like = torch.sin(torch.arange(64, dtype=torch.float64) / 1.3).expand(64, 64)  # grey, uncorrelated
    kept = gf.apply(shading_like) - gf.apply(torch.zeros_like(shading_like))
    assert float((shading_like - kept).std()) > 0.5 * float(shading_like.std())


def _map_model(mesh: TexturedMesh, size: int, scale: float = 1.0):
    from pbidr.model.pbidr_model import PBIDRModel
    from pbidr.training.conf import model_config

    conf = {"feature_vector_size": 0, "sdf_network": {"parameterisation": "displacement_map"},
            "displacement_map": {"resolution": size, "finest_level": 0, "coarsest_level": 2}}
    model = PBIDRModel(model_config(conf))
    model.attach_coarse_mesh(mesh.vertices / scale, mesh.faces, mesh.vertex_normals(), uv=mesh.uv,
                             face_uv=mesh.face_uv, scale=scale)
    return model


def test_zero_map_gives_back_the_coarse_mesh_and_a_constant_map_moves_it_along_the_normal(tmp_path):
    from pbidr.evaluation.run_eval import detail_meshes, world_sdf
    from pbidr.preprocess.sample import make_sample
    from pbidr.io.load import load_mesh

    make_sample(tmp_path / "s", grid=(30, 40), texture_size=64)
    mesh = load_mesh(tmp_path / "s" / "mesh.obj")
    scale = 120.0
    model = _map_model(mesh, 64, scale)
    scale_mat = np.diag([scale, scale, scale, 1.0])
    field = model.sdf_network
    zero = detail_meshes(mesh, world_sdf(field.sdf, scale_mat))
    assert np.abs(zero.detailed.vertices - mesh.vertices).max() <= 0.01
    assert np.abs(zero.displacement).max() <= 0.01
    with torch.no_grad():  # a constant D of 0.4 mm: the finest grid holds it exactly
        field.grids.grids[-1].fill_(float(np.arctanh(0.4 / field.grids.max_d) * field.grids.max_d))
    moved = detail_meshes(mesh, world_sdf(field.sdf, scale_mat))
    np.testing.assert_allclose(moved.displacement, 0.4, atol=1e-4)
    offset = moved.detailed.vertices - mesh.vertices
    np.testing.assert_allclose(offset, 0.4 * mesh.vertex_normals(), atol=1e-4)
    # the dense mesh follows the same surface, along the smooth normals it carries
    np.testing.assert_allclose(moved.displacement_subdivided, 0.4, atol=1e-4)


def test_the_map_sdf_gradient_is_the_detailed_normal():
    """Autograd through f = d_coarse - D(uv(c(x))) gives n_c - grad_s D (D = a x on a plane)."""
    mesh = plane_mesh()
    model = _map_model(mesh, 64)
    field = model.sdf_network
    a = 0.2
    with torch.no_grad():
        x = torch.as_tensor(build_chart(mesh, (64, 64)).points[..., 0], dtype=torch.float32)
        field.grids.base.copy_(torch.atanh(a * x / field.grids.max_d) * field.grids.max_d)
    pts = torch.tensor([[5.0, 7.0, 0.3], [12.0, 9.0, -0.2], [8.0, 14.0, 0.05]])
    _, _, grad = field.sdf_feature_gradient(pts, create_graph=False)
    torch.testing.assert_close(grad, torch.tensor([[-a, 0.0, 1.0]]).expand(3, 3), atol=2e-3, rtol=0)
    # and the value: the surface z = a x is the zero set
    sdf = field.sdf(torch.tensor([[5.0, 7.0, 0.2 * 5.0]]))
    assert abs(float(sdf.detach())) < 2e-3


def _shaded_texture(mesh: TexturedMesh, size: int, displacement, light=(-0.35, 0.45, 0.82)):
    """Texture (H, W, 3) uint8: albedo x (0.35 + 0.65 max(0, n.l)) of the mesh displaced by
    ``displacement(x, y)`` (mm) along its normals, at every texel's surface point (the normal from the
    displacement's surface gradient, exact on the plane: test above)."""
    chart = build_chart(mesh, (size, size))
    x, y = chart.points[..., 0], chart.points[..., 1]
    ct = {k: torch.as_tensor(getattr(chart, k), dtype=torch.float64) for k in ("normals", "grad_u", "grad_v")}
    ct["interior"] = torch.ones(chart.size, dtype=torch.float64)
    n = detailed_normals(ct, torch.as_tensor(displacement(x, y))).numpy()
    l = np.asarray(light) / np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.maximum(n @ l, 0.0)
    albedo = np.array([0.8, 0.6, 0.5])
    return np.clip(np.round(albedo * shade[..., None] * 255), 0, 255).astype(np.uint8), chart


def test_fit_recovers_bumps_on_a_plane_and_seam_copies_agree():
    """A split plane (two UV islands, a seam down the middle) whose texture shades known bumps: the fit
    finds them (correlation > 0.8 inside) and D at the two UV copies of each seam vertex agrees."""
    mesh = plane_mesh(n=21, split=True, dome=25.0)  # a curved coarse shape anchors the light

    def bumps(x, y):
        return 0.25 * np.sin(2 * np.pi * x / 5.0) * np.cos(2 * np.pi * y / 6.0)

    size = 128
    texture, chart = _shaded_texture(mesh, size, bumps)
    mesh.texture = texture
    seams = seam_pairs(chart, mesh)
    assert len(seams[0]) == 21  # the middle column's vertices, each with two UV corners
    cfg = FitConfig(steps=120, coarsest_level=4, finest_level=0, level_steps=10, albedo_radius_mm=2.0,
                    lowpass_sigma_mm=6.0, laplacian_weight=0.01, log_every=1000)
    fit = fit_detail(chart, texture_colours(mesh, chart.size), cfg, seams=seams)
    inner = chart.interior.copy()
    inner[:, 50:78] = False  # around the seam the islands' borders have no central differences
    truth = bumps(chart.points[..., 0], chart.points[..., 1])
    r = np.corrcoef(fit.displacement[inner], truth[inner])[0, 1]
    assert r > 0.8, r
    flat = fit.displacement.reshape(-1)
    gap = np.abs(flat[seams[0]] - flat[seams[1]])
    assert gap.mean() < 0.25 * float(np.std(fit.displacement[inner])), (gap.mean(), np.std(fit.displacement[inner]))


def test_a_mesh_without_uvs_gets_a_chart_and_runs_end_to_end(tmp_path):
    """Vertex colours, no UVs: preprocess gives the scan mesh an xatlas chart and a baked texture;
    the texel solver trains on it and eval writes the maps."""
    pytest.importorskip("xatlas")
    from pbidr.evaluation.run_eval import evaluate
    from pbidr.geometry.cameras import Rig
    from pbidr.io.load import load_mesh
    from pbidr.io.obj import write_obj
    from pbidr.preprocess.pipeline import preprocess
    from pbidr.preprocess.sample import make_sample
    from pbidr.training.trainer import Trainer

    make_sample(tmp_path / "s", grid=(30, 40), texture_size=64)
    textured = load_mesh(tmp_path / "s" / "mesh.obj")
    from pbidr.evaluation.uv_maps import sample_uv_map

    corner_colour = sample_uv_map(textured.texture.astype(np.float64), textured.uv)
    vc = np.zeros((len(textured.vertices), 3))
    vc[textured.faces.reshape(-1)] = corner_colour[textured.face_uv.reshape(-1)]
    bare = TexturedMesh(textured.vertices, textured.faces, vertex_colors=np.round(vc).astype(np.uint8))
    (tmp_path / "raw").mkdir()
    write_obj(tmp_path / "raw" / "mesh.obj", bare)
    preprocess(tmp_path / "raw", tmp_path / "scan", Rig(yaw=3, yaw_angle=30, res=64), progress=False)
    scan_mesh = load_mesh(tmp_path / "scan" / "mesh.obj")
    assert scan_mesh.has_texture and np.array_equal(scan_mesh.faces, bare.faces)
    over = {"train.iters": 6, "train.checkpoint_freq": 0, "model.displacement_map.resolution": 64}
    from pbidr.training.conf import confs_dir

    Trainer(tmp_path / "scan", tmp_path / "run", confs_dir() / "fast.conf", over, progress=False).run()
    metrics = evaluate(tmp_path / "run", mc_resolution=32, views="2", device="cpu", progress=False,
                       eval_rendering=False)
    assert (tmp_path / "run" / "eval" / "displacement.exr").is_file()
    assert metrics["dense_mesh"]["subdivisions"] >= 1
    # PBIDR's image model part by part in the UV layout: they give the texture back
    parts = metrics["image_model"]
    for name in parts["files"].values():
        assert (tmp_path / "run" / "eval" / name).is_file(), name
    assert parts["texture_psnr_db"] > 25.0 and parts["light"]["model"] in ("lambert", "lambert2")


def test_texel_colours_equal_what_the_views_show_at_the_same_points(tmp_path):
    """The texel sampler's colours (the texture) against the preprocess renders at the same surface
    points (projected into every view that sees them): equal up to the renders' resampling."""
    from pbidr.detail.views import view_colours
    from pbidr.geometry.cameras import Rig
    from pbidr.io.load import load_mesh
    from pbidr.preprocess.pipeline import preprocess
    from pbidr.preprocess.sample import make_sample

    make_sample(tmp_path / "s", grid=(60, 80), texture_size=128)
    preprocess(tmp_path / "s", tmp_path / "scan", Rig(yaw=3, yaw_angle=20, res=512), progress=False)
    mesh = load_mesh(tmp_path / "scan" / "mesh.obj")
    chart = build_chart(mesh, (64, 64))
    from_texture = texture_colours(mesh, chart.size)
    from_views, seen = view_colours(chart, tmp_path / "scan")
    inner = seen & chart.interior
    inner[:8] = inner[-8:] = False
    inner[:, :8] = inner[:, -8:] = False  # the border band faces away from every camera
    assert inner.sum() > 0.5 * chart.mask.sum()
    err = np.abs(from_views[inner] - from_texture[inner])
    assert np.median(err) < 2.0 / 255 and np.percentile(err, 95) < 8.0 / 255, (np.median(err) * 255,
                                                                               np.percentile(err, 95) * 255)


def test_dense_mesh_edges_are_about_a_texel(tmp_path):
    from pbidr.evaluation.displacement import subdivide_to_spacing
    from pbidr.evaluation.run_eval import map_texel_spacing
    from pbidr.io.load import load_mesh
    from pbidr.preprocess.sample import make_sample

    make_sample(tmp_path / "s", grid=(30, 40), texture_size=64)
    mesh = load_mesh(tmp_path / "s" / "mesh.obj")
    for res in (64, 128, 256):
        texel = map_texel_spacing(mesh, res)
        dense, normals, levels = subdivide_to_spacing(mesh, texel)
        e = dense.vertices[dense.faces] - dense.vertices[np.roll(dense.faces, -1, axis=1)]
        median = float(np.median(np.linalg.norm(e, axis=-1)))
        assert 0.5 * texel <= median <= 1.5 * texel or levels == 3, (res, texel, median, levels)
        np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-9)


def test_finescale_prior_ignores_constants_and_weighs_texel_noise_above_fine_detail():
    """The fine-scale prior (D minus its one-texel Gaussian mean): zero for a constant offset; a
    texel checkerboard costs far more than a 10-texel wave of the same amplitude; with the prior's
    weight the energy grows by weight x term."""
    from pbidr.detail.fit import TexelObjective

    mesh = plane_mesh(n=21, dome=25.0)
    size = 64
    chart = build_chart(mesh, (size, size))
    colours = np.full((size, size, 3), 0.5)
    off = TexelObjective(chart, colours, FitConfig(laplacian_weight=0.0, lowpass_weight=0.0, finescale_weight=0.0))
    on = TexelObjective(chart, colours, FitConfig(laplacian_weight=0.0, lowpass_weight=0.0, finescale_weight=2.0))
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    inside = torch.as_tensor(chart.mask, dtype=torch.float32)
    maps = {
        "constant": np.full((size, size), 0.1),
        "wave": 0.1 * np.cos(2 * np.pi * cols / 10.0),
        "checker": 0.1 * (-1.0) ** (rows + cols),
    }
    fine = {}
    for name, d in maps.items():
        d = torch.as_tensor(d, dtype=torch.float32) * inside
        e_on, terms = on.energy(d)
        e_off, _ = off.energy(d)
        fine[name] = float(terms["finescale"])
        assert float(e_on - e_off) == pytest.approx(2.0 * fine[name], rel=1e-4, abs=1e-9)
    assert fine["constant"] < 1e-6 * fine["checker"], fine
    assert fine["checker"] > 5.0 * fine["wave"] > 0.0, fine


def test_known_light_and_albedo_replace_the_fitted_ones_and_hold_the_truth():
    """The diagnostics' energy: with the true light and albedo (no filter) the data term of the true
    map is 8-bit noise, far below that of the zero map; the light is used as given."""
    from pbidr.detail.fit import Light, TexelObjective

    mesh = plane_mesh(n=21, dome=25.0)

    def bumps(x, y):
        return 0.25 * np.sin(2 * np.pi * x / 5.0) * np.cos(2 * np.pi * y / 6.0)

    size = 96
    texture, chart = _shaded_texture(mesh, size, bumps)
    l = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])
    light = Light("lambert", 1, np.array([0.35, *(0.65 * l)]))
    grey = 1.0 + 0.15 * np.sin(2 * np.pi * chart.points[..., 1] / 3.0)  # grey albedo: no filter explains it
    albedo = np.array([0.8, 0.6, 0.5]) * grey[..., None]
    texture = np.clip(np.round(texture * grey[..., None]), 0, 255)
    cfg = FitConfig(laplacian_weight=0.0, lowpass_weight=0.0, finescale_weight=0.0, seam_weight=0.0,
                    mark_tau=0.0, dark_level=0.0)
    known = TexelObjective(chart, texture / 255.0, cfg, light=light, albedo=albedo)
    assert known.light is light
    truth = torch.as_tensor(bumps(chart.points[..., 0], chart.points[..., 1]), dtype=torch.float32)
    at_truth = float(known.energy(truth)[1]["data"])
    at_zero = float(known.energy(torch.zeros_like(truth))[1]["data"])
    assert at_truth < 0.1 * at_zero, (at_truth, at_zero)
    fitted = TexelObjective(chart, texture / 255.0, cfg)
    assert not np.allclose(fitted.light.coeffs, light.coeffs)  # fitted: another scale (and an estimate)
    assert float(fitted.energy(truth)[1]["data"]) > 3.0 * at_truth  # the filter leaves the grey albedo in
