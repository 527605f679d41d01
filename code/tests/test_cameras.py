import cv2
import numpy as np
import pytest

from pbidr.geometry.cameras import (
    Camera, Rig, bounding_sphere, camera_from_world_mat, cameras_npz_arrays, intrinsics, load_cameras_npz,
    look_at, pixel_rays, scale_matrix, to_normalised, to_world,
)
from pbidr.errors import PbidrError


def test_front_camera_convention():
    """Yaw 0 looks at the face from +z: world +x is image right, world +y is image up."""
    cam = Rig(yaw=1, res=65).cameras()[0]
    np.testing.assert_allclose(cam.center, [0, 0, 8], atol=1e-12)
    pix, depth = cam.project(np.array([[0.0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]]))
    np.testing.assert_allclose(pix[0], [32, 32], atol=1e-9)  # principal point at the central pixel
    assert pix[1, 0] > 32 and abs(pix[1, 1] - 32) < 1e-9
    assert pix[2, 1] < 32 and abs(pix[2, 0] - 32) < 1e-9
    np.testing.assert_allclose(depth, 8.0)


def test_rig_angles_and_sweep():
    rig = Rig(yaw=17, yaw_angle=45, pitch=3, pitch_angle=30)
    ang = rig.angles()
    assert len(ang) == 17 + 2  # pitch 0 at yaw 0 is not repeated
    assert ang[0] == (-45.0, 0.0) and ang[16] == (45.0, 0.0)
    cams = rig.cameras()
    for cam, (yaw, pitch) in zip(cams, ang):
        c = cam.center
        assert abs(np.linalg.norm(c) - 8.0) < 1e-9
        assert np.degrees(np.arctan2(c[0], c[2])) == pytest.approx(yaw, abs=1e-9)
        assert np.degrees(np.arcsin(c[1] / 8.0)) == pytest.approx(pitch, abs=1e-9)
        # every camera looks at the centre
        np.testing.assert_allclose(cam.project(np.zeros((1, 3)))[0][0], [511.5, 511.5], atol=1e-9)


def test_front_and_up_override():
    cam = Rig(yaw=1, res=33, front=(1, 0, 0), up=(0, 0, 1)).cameras()[0]
    np.testing.assert_allclose(cam.center, [8, 0, 0], atol=1e-12)
    pix, _ = cam.project(np.array([[0, 0, 0.5]]))
    assert pix[0, 1] < 16  # +z (up) is image up


def test_cameras_npz_round_trip(tmp_path):
    """Decomposing world_mat @ scale_mat with cv2 gives the rig's K, R, t to 1e-5 relative."""
    verts = np.random.default_rng(0).normal(size=(100, 3)) * 40 + [3, -7, 120]
    center, radius = bounding_sphere(verts)
    S = scale_matrix(center, radius)
    cams = Rig(yaw=5, pitch=3, res=256).cameras()
    arrays = cameras_npz_arrays(cams, S)
    np.savez(tmp_path / "cameras.npz", **arrays)
    data = np.load(tmp_path / "cameras.npz")
    for i, cam in enumerate(cams):
        K, R, c_h = cv2.decomposeProjectionMatrix((data[f"world_mat_{i}"] @ data[f"scale_mat_{i}"])[:3, :4])[:3]
        K = K / K[2, 2]
        t = -R @ (c_h[:3, 0] / c_h[3, 0])
        for got, want in ((K, cam.K), (R, cam.R), (t, cam.t)):
            assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    loaded, scale0 = load_cameras_npz(tmp_path / "cameras.npz", len(cams), 256, 256)
    np.testing.assert_allclose(scale0, S)
    for a, b in zip(loaded, cams):
        np.testing.assert_allclose(a.P, b.P, rtol=1e-6, atol=1e-6 * np.abs(b.P).max())
    # world points project the same through world_mat as normalised points through the rig
    pw = verts[:5]
    proj = (data["world_mat_2"] @ np.c_[pw, np.ones(5)].T).T
    pix_world = proj[:, :2] / proj[:, 2:3]
    pix_norm, _ = cams[2].project(to_normalised(pw, S))
    np.testing.assert_allclose(pix_world, pix_norm, atol=1e-6)
    np.testing.assert_allclose(to_world(to_normalised(pw, S), S), pw)


def test_cameras_npz_count_mismatch(tmp_path):
    cams = Rig(yaw=3, res=16).cameras()
    np.savez(tmp_path / "cameras.npz", **cameras_npz_arrays(cams, np.eye(4)))
    with pytest.raises(PbidrError, match="cameras.npz"):
        load_cameras_npz(tmp_path / "cameras.npz", 4, 16, 16)
    with pytest.raises(PbidrError, match="3 cameras but there are 2 images"):
        load_cameras_npz(tmp_path / "cameras.npz", 2, 16, 16)


def test_pixel_rays_pass_through_pixel_centres():
    R, t = look_at(np.array([1.0, 2.0, 9.0]), np.zeros(3), np.array([0, 1.0, 0]))
    cam = Camera(K=intrinsics(100.0, 40, 30), R=R, t=t, width=40, height=30)
    o, d = pixel_rays(cam)
    assert o.shape == (1200, 3) and np.allclose(np.linalg.norm(d, axis=1), 1)
    pix, depth = cam.project(o + 5.0 * d)
    rows, cols = np.divmod(np.arange(1200), 40)
    np.testing.assert_allclose(pix, np.stack([cols, rows], 1), atol=1e-9)
    assert np.all(depth > 0)


def test_rig_rejects_bad_values():
    for bad in (Rig(yaw=0, pitch=0), Rig(res=2), Rig(distance=0.5), Rig(front=(0, 1, 0), up=(0, 2, 0))):
        with pytest.raises(PbidrError):
            bad.cameras()
