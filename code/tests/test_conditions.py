"""The family of procedural faces (pbidr sample --preset / --set): every preset writes its truth, the
knobs do what their docs say, and the truth the scorer rebuilds is the one the files hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pbidr.errors import PbidrError
from pbidr.preprocess import conditions as C
from pbidr.preprocess import face_model as M
from pbidr.preprocess.face_marks import MARK_KINDS
from pbidr.preprocess.sample import make_sample, shade, texel_fields

GRID = (40, 50)
TEX = 128
ANALYTIC = [name for name, knobs in C.PRESETS.items() if knobs.get("renderer", "analytic") == "analytic"]


@pytest.mark.parametrize("preset", ANALYTIC)
def test_every_preset_writes_its_truth(preset, tmp_path):
    """Each preset's folder holds one mask per mark kind it asks for (with marks in it), its conditions and
    light in sample.json, and a per-vertex truth that the scorer's Face rebuilds from sample.json."""
    from pbidr.evaluation.score import load_sample

    cond = C.conditions_for(preset, texture_size=TEX)
    out = tmp_path / preset
    make_sample(out, seed=3, grid=GRID, conditions=cond, preset=preset)
    meta = json.loads((out / "sample.json").read_text())
    assert meta["preset"] == preset and C.FaceConditions.from_dict(meta["conditions"]) == cond
    assert np.allclose(meta["lighting"]["key_direction"], cond.lighting.key_direction)
    kinds = [k for k in MARK_KINDS if getattr(cond.marks, k) > 0]
    assert sorted(meta["marks"]) == sorted(kinds)
    for kind in kinds:
        mask = np.asarray(Image.open(out / f"marks_{kind}_uv.png")) > 127
        assert mask.any(), kind
    truth = load_sample(out)
    assert sorted(truth.kinds) == sorted(kinds)
    uv = np.stack(np.meshgrid(np.linspace(0, 1, GRID[0]), np.linspace(0, 1, GRID[1])), -1).reshape(-1, 2)
    np.testing.assert_allclose(np.load(out / "gt_displacement.npy"), truth.face.displacement(uv[:, 0], uv[:, 1]))


def test_the_light_knobs_set_the_light_they_document():
    assert C.angles(C.direction(60.0, 10.0)) == pytest.approx((60.0, 10.0))
    lit = C.conditions_for("grazing").lighting
    assert np.degrees(np.arccos(lit.key_direction[2])) == pytest.approx(60.0)
    frontal = C.conditions_for("frontal").lighting
    assert np.degrees(np.arccos(frontal.key_direction[2])) <= 15.0
    classic = C.FaceConditions().lighting
    assert classic.key_direction == M.LIGHT_DIRECTION  # the classic sample's light, bit for bit
    # the fill sits opposite the key unless told; the lobe is where the normal halves key and viewer
    fill = C.conditions_for("soft-fill").lighting
    assert (C.angles(fill.fill_direction)[1] - C.angles(fill.key_direction)[1]) % 360 == pytest.approx(180.0)
    glossy = C.conditions_for("glossy").lighting
    half = np.add(glossy.key_direction, [0, 0, 1.0])
    half /= np.linalg.norm(half)
    shading, lobe = shade(np.stack([half, [0, 0, 1.0]]), glossy)
    assert lobe[0] == pytest.approx(glossy.specular) and lobe[1] < lobe[0]


def test_bad_knobs_are_refused_in_one_line():
    with pytest.raises(PbidrError, match="lighting.angle_deg=95.0: out of range"):
        C.conditions_for("classic", {"lighting.angle_deg": "95"})
    with pytest.raises(PbidrError, match="no such condition"):
        C.conditions_for("classic", {"lighting.angel_deg": "5"})
    with pytest.raises(PbidrError, match="expected an integer"):
        C.conditions_for("classic", {"marks.grey": "many"})
    with pytest.raises(PbidrError, match="unknown"):
        C.conditions_for("nope")
    with pytest.raises(PbidrError, match="KEY=VALUE"):
        C.parse_settings(["marks.grey"])


def test_pores_are_half_to_one_and_a_half_mm_mostly_pits_and_continuous():
    x = np.linspace(-20.0, 20.0, 801)
    px, py = np.meshgrid(x, x)
    p = M.pores(px, py, seed=0)
    assert (p < -0.3).sum() > 2.0 * (p > 0.3).sum()  # three in four are pits
    from scipy import ndimage

    labels, count = ndimage.label(np.abs(p) > np.exp(-0.5 * 4))  # inside 2 sigma = the diameter
    sizes = ndimage.sum(np.ones_like(p), labels, np.arange(1, count + 1)) * (x[1] - x[0]) ** 2
    diameters = 2.0 * np.sqrt(sizes / np.pi)
    assert 0.3 < np.median(diameters) < 1.6 and count > 200
    # evaluated point by point (3 x 3 cells) the field has no seams at cell borders: no step exceeds what
    # the steepest pore's slope (depth / sigma_min e^-1/2 < 5 per mm) allows
    step = x[1] - x[0]
    assert np.abs(np.diff(p, axis=1)).max() < 5.0 * step and np.abs(np.diff(p, axis=0)).max() < 5.0 * step


def test_misfit_moves_the_given_mesh_not_the_truths_detail():
    """The given coarse surface is the true one off by at most misfit_mm along the normal; the detail is
    the same field; the texture is shaded on the true surface (no misfit in it)."""
    cond = C.conditions_for("misfit", texture_size=64)
    face, plain = M.Face(cond, seed=2), M.Face(C.FaceConditions(), seed=2)
    u, v = np.meshgrid(np.linspace(0.05, 0.95, 60), np.linspace(0.05, 0.95, 60))
    u, v = u.ravel(), v.ravel()
    off = ((face.coarse_surface(u, v) - M.coarse_surface(u, v)) * M.coarse_normal(u, v)).sum(-1)
    assert 0.5 * cond.misfit_mm < np.abs(off).max() <= 1.01 * cond.misfit_mm  # scaled on a 65 x 65 grid
    np.testing.assert_allclose(face.displacement(u, v), plain.displacement(u, v))
    a = texel_fields(64, 2, cond)
    b = texel_fields(64, 2, C.apply_settings(cond, {"misfit_mm": 0.0}))
    np.testing.assert_array_equal(a.texture(), b.texture())


def test_extra_detail_kinds_add_relief_where_they_say():
    base = C.FaceConditions()
    u, v = np.meshgrid(np.linspace(0.1, 0.9, 200), np.linspace(0.1, 0.9, 200))
    plain = M.displacement_uv(u, v, 1, base.detail)
    for knob, lo, hi in (("detail.wrinkles", 0.05, 0.6), ("detail.folds", 0.3, 3.0), ("detail.pores", 0.02, 0.2)):
        value = 0.08 if knob == "detail.pores" else 4
        more = M.displacement_uv(u, v, 1, C.apply_settings(base, {knob: value}).detail)
        added = np.abs(more - plain).max()
        assert lo < added < hi, (knob, added)


def test_sample_command_lists_knobs_and_presets(capsys):
    from pbidr.commands.main import main

    assert main(["sample", "--list"]) == 0
    text = capsys.readouterr().out
    for name in ("lighting.angle_deg", "marks.grey", "detail.pores", "misfit_mm", "renderer", "new-user", "cycles"):
        assert name in text
