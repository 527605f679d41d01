"""The texel fit's energy where one texture under one light is hard (issue 24): a round bump under an
oblique light comes back round; a highlight on a flat patch is not relief; a texture without detail gives
no relief; a grey mark does not become relief. Each face is made here on a gently curved patch (the
curvature anchors the light fit) with the shipped energy (FitConfig's defaults = loss.texel's)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pbidr.detail.chart import build_chart
from pbidr.detail.fit import FitConfig, chart_tensors, detailed_normals, fit_detail
from pbidr.detail.light import fit_light, fit_lobe
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess.sample import grid_faces

SIZE_MM = 40.0
RES = 96  # texels per side: 0.42 mm
ALBEDO = np.array([0.78, 0.58, 0.47])
CFG = replace(FitConfig(), steps=100, log_every=10**9, coarsest_level=4)
QUICK = replace(CFG, steps=60)  # where nothing is to be found, fewer steps tell as much


def dome(n: int = 33, radius: float = 30.0) -> TexturedMesh:
    """A spherical cap over [-20, 20]^2 mm (normals up to 70 degrees from +z, as on a face), UVs its
    parameter."""
    t = np.linspace(0.0, 1.0, n)
    gu, gv = np.meshgrid(t, t)
    x, y = (gu.ravel() - 0.5) * SIZE_MM, (gv.ravel() - 0.5) * SIZE_MM
    z = np.sqrt(radius**2 - x**2 - y**2) - radius
    faces = grid_faces(n, n)
    return TexturedMesh(np.stack([x, y, z], 1), faces, uv=np.stack([gu.ravel(), gv.ravel()], 1), face_uv=faces.copy())


def direction(angle_deg: float, azimuth_deg: float) -> np.ndarray:
    a, z = np.radians(angle_deg), np.radians(azimuth_deg)
    return np.array([np.sin(a) * np.cos(z), np.sin(a) * np.sin(z), np.cos(a)])


def render(chart, d: np.ndarray, key: np.ndarray, albedo: np.ndarray | None = None, lobe: float = 0.0,
           exponent: float = 24.0) -> np.ndarray:
    """8-bit-quantised texture (RES, RES, 3) in [0, 1]: albedo x (0.35 + 0.65 max(0, n.l)) + a grey
    Blinn-Phong lobe seen from the front, of the patch displaced by ``d`` (mm, (RES, RES))."""
    n = detailed_normals(chart_tensors(chart, torch.device("cpu")), torch.as_tensor(d, dtype=torch.float32))
    n = n.double().numpy()
    shade = 0.35 + 0.65 * np.maximum(n @ key, 0.0)
    half = (key + [0, 0, 1.0]) / np.linalg.norm(key + [0, 0, 1.0])
    albedo = np.broadcast_to(ALBEDO, d.shape + (3,)) if albedo is None else albedo
    tex = albedo * shade[..., None] + lobe * np.maximum(n @ half, 0.0)[..., None] ** exponent
    return np.round(np.clip(tex, 0.0, 1.0) * 255.0) / 255.0


@pytest.fixture(scope="module")
def patch():
    mesh = dome()
    chart = build_chart(mesh, (RES, RES))
    return mesh, chart, chart.points[..., 0], chart.points[..., 1]


def inner(chart, margin_mm: float = 5.0) -> np.ndarray:
    x, y = chart.points[..., 0], chart.points[..., 1]
    return chart.interior & (np.abs(x) < SIZE_MM / 2 - margin_mm) & (np.abs(y) < SIZE_MM / 2 - margin_mm)


def test_a_round_bump_under_an_oblique_light_comes_back_round(patch):
    """A Gaussian bump (sigma 2 mm, 0.4 mm high) lit from 45 degrees: the fitted relief's extent along and
    across the light (second moments of its positive part) differ by at most 1.3x, and it is a bump."""
    mesh = patch[0]
    chart = build_chart(mesh, (128, 128))  # 0.31 mm texels: the bump's profile resolved
    x, y = chart.points[..., 0], chart.points[..., 1]
    truth = 0.4 * np.exp(-0.5 * (x**2 + y**2) / 2.0**2)
    key = direction(45.0, 30.0)
    fit = fit_detail(chart, render(chart, truth, key), replace(CFG, steps=120))
    d = np.where(inner(chart), fit.displacement, 0.0)
    w = np.clip(d, 0.0, None) * (np.hypot(x, y) < 8.0)
    assert w.sum() > 0 and np.corrcoef(d[inner(chart)], truth[inner(chart)])[0, 1] > 0.8
    cx, cy = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    cov = np.cov(np.stack([(x - cx).ravel(), (y - cy).ravel()]), aweights=w.ravel())
    along = np.array([key[0], key[1]]) / np.hypot(key[0], key[1])
    across = np.array([-along[1], along[0]])
    spread = np.sqrt([along @ cov @ along, across @ cov @ across])
    assert spread.max() / spread.min() <= 1.3, spread


def test_a_highlight_on_a_flat_patch_is_not_relief(patch):
    """No detail, a glossy lobe from the key: the fit finds the lobe on the coarse shape and leaves D near
    zero; without the lobe in the image model the same texture turns into a bump."""
    _, chart, x, y = patch
    key = direction(30.0, 60.0)
    texture = render(chart, np.zeros_like(x), key, lobe=0.35)
    on = fit_detail(chart, texture, CFG)  # the bump without the lobe needs the full steps to grow
    off = fit_detail(chart, texture, replace(CFG, specular="off"))
    assert on.light.lobe is not None and off.light.lobe is None
    m = inner(chart)
    rms_on, rms_off = np.sqrt(np.mean(on.displacement[m] ** 2)), np.sqrt(np.mean(off.displacement[m] ** 2))
    assert rms_on < 0.02 and rms_off > 3.0 * rms_on, (rms_on, rms_off)


@pytest.mark.parametrize("angle", [10.0, 45.0])
def test_a_texture_without_detail_gives_no_relief(patch, angle):
    """No relief, one colour, a near-frontal or an oblique key, a glossy lobe: |D| stays near zero (the
    coarse mesh is the answer: the light, the lobe and the albedo explain the texture). Near zero: an RMS
    under 0.025 mm, a tenth of the built-in sample's detail (measured 0.020 at 10 degrees, 0.011 at 45)."""
    _, chart, x, _ = patch
    fit = fit_detail(chart, render(chart, np.zeros_like(x), direction(angle, 200.0), lobe=0.25), QUICK)
    d = fit.displacement[inner(chart)]
    assert np.sqrt(np.mean(d**2)) < 0.025 and np.abs(d).max() < 0.1, (np.sqrt(np.mean(d**2)), np.abs(d).max())


@pytest.mark.xfail(strict=True, reason="a known limit (BENCHMARKS.md, matrix): slow albedo tone and dark marks "
                                       "still leave 0.03-0.06 mm of relief where there is none")
def test_tone_and_marks_without_detail_give_no_relief(patch):
    """No relief, a 4 % albedo tone wave and 40 coloured or grey marks: the fit should leave D near zero."""
    _, chart, x, y = patch
    rng = np.random.default_rng(3)
    albedo = ALBEDO * (1.0 + 0.04 * np.sin(x / 7.0 + y / 11.0))[..., None]
    for cx, cy in rng.uniform(-14, 14, (40, 2)):
        spot = np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 0.5**2)[..., None]
        tint = np.array([0.3, 0.4, 0.48]) if rng.uniform() < 0.5 else np.array([0.45, 0.45, 0.45])
        albedo = albedo * (1.0 - 0.8 * spot * tint)
    fit = fit_detail(chart, render(chart, np.zeros_like(x), direction(45.0, 200.0), albedo=albedo), QUICK)
    d = fit.displacement[inner(chart)]
    assert np.sqrt(np.mean(d**2)) < 0.01, np.sqrt(np.mean(d**2))


def _grey_mark_face(chart):
    x, y = chart.points[..., 0], chart.points[..., 1]
    truth = 0.15 * np.sin(2 * np.pi * y / 4.0) * np.exp(-0.5 * (x**2 + y**2) / 9.0**2)
    rng = np.random.default_rng(5)
    centres = rng.uniform(-12, 12, (25, 2))
    dist = np.min([np.hypot(x - cx, y - cy) for cx, cy in centres], axis=0)
    albedo = ALBEDO * (1.0 - 0.5 * np.clip(1.5 - dist / 0.6, 0.0, 1.0))[..., None]  # grey: all channels alike
    return truth, dist, render(chart, truth, direction(40.0, 120.0), albedo=albedo)


def _leak(chart, d, truth, dist) -> float:
    """pbidr score's leak on the patch: the 3 mm high-pass of the error on the marks over that around them."""
    from scipy import ndimage

    err = d - truth
    high = np.abs(err - ndimage.gaussian_filter(err, 3.0 / (SIZE_MM / RES)))
    m = inner(chart)
    return float(high[m & (dist < 0.6)].mean() / high[m & (dist > 1.0) & (dist < 4.0)].mean())


@pytest.fixture(scope="module")
def grey_fits(patch):
    """The grey-mark face fitted with the mark layer (the shipped cost) and without it."""
    _, chart, _, _ = patch
    truth, dist, texture = _grey_mark_face(chart)
    fits = {cost: fit_detail(chart, texture, replace(CFG, mark_layer_cost=cost)).displacement for cost in (0.5, 0.0)}
    return chart, truth, dist, fits


def test_the_mark_layer_keeps_grey_marks_out_of_the_relief(grey_fits):
    """Wrinkles (true relief) under grey, colourless marks: with the mark layer the wrinkles come back
    (correlation > 0.7) and the relief's error on the marks is under half of what it is without the layer
    (measured: 0.074 against 0.186 mm; correlation 0.78 against 0.41)."""
    chart, truth, dist, fits = grey_fits
    m = inner(chart)
    on_marks = m & (dist < 0.6)
    error = {cost: float(np.sqrt(np.mean((d - truth)[on_marks] ** 2))) for cost, d in fits.items()}
    assert np.corrcoef(fits[0.5][m], truth[m])[0, 1] > 0.7
    assert error[0.5] < 0.5 * error[0.0], error


@pytest.mark.xfail(strict=True, reason="a target missed (BENCHMARKS.md): a streak along the light still costs the "
                                       "energy less than the mark layer does, so grey marks leak 1.3-1.7")
def test_a_grey_mark_gives_leak_at_most_1_2(grey_fits):
    chart, truth, dist, fits = grey_fits
    assert _leak(chart, fits[0.5], truth, dist) <= 1.2


def test_the_lobe_is_kept_only_when_the_texture_holds_one(patch):
    """fit_lobe on coarse normals: a matte texture gives none, a glossy one gives the half-vector and the
    exponent it was made with (to the search's grid)."""
    _, chart, x, _ = patch
    key = direction(35.0, 40.0)
    n = torch.as_tensor(chart.normals[chart.mask])
    for strength, want in ((0.0, None), (0.3, 32.0)):
        tex = torch.as_tensor(render(chart, np.zeros_like(x), key, lobe=strength, exponent=32.0)[chart.mask])
        diffuse = fit_light(n, tex.mean(-1), "lambert")
        lobe = fit_lobe(n, tex, diffuse, key=diffuse.key_direction())
        if want is None:
            assert lobe is None
        else:
            half = (key + [0, 0, 1.0]) / np.linalg.norm(key + [0, 0, 1.0])
            assert lobe[4] == want and np.degrees(np.arccos(np.clip(lobe[1:4] @ half, -1, 1))) < 5.0


def test_a_key_and_a_fill_are_told_apart_from_one_light_by_held_out_texels():
    rng = np.random.default_rng(0)
    n = rng.normal(size=(40000, 3))
    n[:, 2] = np.abs(n[:, 2]) + 0.2
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    key, fill = direction(45.0, 30.0), direction(40.0, 210.0)
    one = 0.35 + 0.65 * np.maximum(n @ key, 0.0)
    two = one + 0.3 * np.maximum(n @ fill, 0.0)
    assert fit_light(torch.as_tensor(n), torch.as_tensor(one), "auto").model == "lambert"
    light = fit_light(torch.as_tensor(n), torch.as_tensor(two), "auto")
    assert light.model == "lambert2"
    info = light.describe()
    assert np.degrees(np.arccos(np.clip(np.dot(info["fill_direction"], fill), -1, 1))) < 3.0
    assert info["fill"] == pytest.approx(0.3, rel=0.02)


def test_texel_solver_with_lobe_and_mark_layer_resumes_exactly():
    """The training solver on a glossy patch (the lobe found, the mark layer on): a solver rebuilt from a
    state saved part way (model, optimiser, scheduler), as --resume does, ends bit for bit where the
    straight one does."""
    import copy

    from pbidr.detail.solver import TexelSolver, fit_config
    from pbidr.model.pbidr_model import PBIDRModel
    from pbidr.training.conf import load_conf, model_config

    mesh = dome()
    chart = build_chart(mesh, (96, 96))
    texture = render(chart, 0.2 * np.sin(chart.points[..., 0] / 1.5), direction(35.0, 40.0), lobe=0.35)
    mesh.texture = np.round(texture * 255).astype(np.uint8)
    conf = load_conf(None, {"model.displacement_map.resolution": 96})
    fit = fit_config(load_conf(None).loss.texel, conf.model.displacement_map, 0.02, 12)

    def solver():
        model = PBIDRModel(model_config({"feature_vector_size": 0, "sdf_network": {"parameterisation": "displacement_map"},
                                         "displacement_map": {"resolution": 96, "finest_level": 0, "coarsest_level": 3}}))
        model.attach_coarse_mesh(mesh.vertices, mesh.faces, mesh.vertex_normals(), uv=mesh.uv, face_uv=mesh.face_uv)
        return model, TexelSolver(model, fit, "texture", mesh, None, torch.device("cpu"), 12)

    model, straight = solver()
    for step in range(12):
        straight.step(step)
        if step == 8:
            saved = copy.deepcopy((model.state_dict(), straight.optimizer.state_dict(), straight.scheduler.state_dict()))
    assert straight.objective.light.lobe is not None and float(model.sdf_network.light_lobe[0]) > 0
    assert float(model.sdf_network.grids.mark_layer().detach().max()) > 0.01  # the layer moved
    model2, resumed = solver()
    model2.load_state_dict(saved[0])
    resumed.optimizer.load_state_dict(saved[1])
    resumed.scheduler.load_state_dict(saved[2])
    for step in range(9, 12):
        resumed.step(step)
    for key, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key]), key
