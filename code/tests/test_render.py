import cv2
import numpy as np
import pytest

from pbidr.geometry.cameras import Rig, bounding_sphere, pixel_rays, scale_matrix, to_normalised
from pbidr.geometry.raycast import MeshRayCaster
from pbidr.io.mesh import TexturedMesh
from pbidr.preprocess.render import EmbreeRenderer

from conftest import checker_texture, textured_sphere


def textured_square(depth: float = 0.0):
    """The square [-1, 1]^2 at z = depth, facing +z, UV (0, 0) at (-1, -1) and (1, 1) at (1, 1)."""
    v = np.array([[-1, -1, depth], [1, -1, depth], [1, 1, depth], [-1, 1, depth]], float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    return TexturedMesh(vertices=v, faces=f, uv=uv, face_uv=f, texture=checker_texture(64, 4))


def test_analytic_textured_square():
    """Pixels whose ray meets the plane inside a texture block show exactly that block's colour."""
    mesh = textured_square(depth=0.0)
    S = scale_matrix(*bounding_sphere(mesh.vertices))
    cam = Rig(yaw=1, res=64).cameras()[0]
    view = EmbreeRenderer(mesh, S).render(cam)
    o, d = pixel_rays(cam)
    # analytic intersection with the plane z = 0 of the normalised frame (= world z 0 here)
    plane_z = to_normalised(np.zeros((1, 3)), S)[0, 2]
    s = (plane_z - o[:, 2]) / d[:, 2]
    p_world = (o + s[:, None] * d) * S[0, 0] + S[:3, 3]
    u, v = (p_world[:, 0] + 1) / 2, (p_world[:, 1] + 1) / 2
    inside = (u > 0) & (u < 1) & (v > 0) & (v < 1)
    np.testing.assert_array_equal(view.mask.ravel(), inside)
    # depth along the ray matches the analytic distance
    np.testing.assert_allclose(view.depth.ravel()[inside], s[inside], rtol=1e-5)
    # well inside a block (away from block edges by > 1 texel) the colour is the block's
    block = 64 // 4
    col, row = u * 64, (1 - v) * 64  # OBJ convention: v = 0 is the image bottom
    interior = inside & (np.abs(col / block - np.round(col / block)) * block > 1.5) & \
        (np.abs(row / block - np.round(row / block)) * block > 1.5)
    assert interior.sum() > 200
    tex = mesh.texture
    expected = tex[row[interior].astype(int), col[interior].astype(int)]
    np.testing.assert_array_equal(view.rgb.reshape(-1, 3)[interior], expected)
    # the block at the texture's top-left lands at the image's top-left (x right, y up)
    assert np.all(view.rgb[17, 17] == tex[0, 0]) and np.all(view.rgb[46, 46] == tex[-1, -1])
    # background is white
    assert np.all(view.rgb[~view.mask] == 255)


def test_vertex_colours_are_interpolated():
    mesh = textured_square()
    vc = np.array([[255, 0, 0], [255, 0, 0], [0, 0, 255], [0, 0, 255]], np.uint8)  # red bottom, blue top
    mesh = TexturedMesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=vc)
    view = EmbreeRenderer(mesh, scale_matrix(*bounding_sphere(mesh.vertices))).render(Rig(yaw=1, res=64).cameras()[0])
    centre = view.rgb[31:33, 31:33].reshape(-1, 3).astype(int)
    assert np.all(np.abs(centre - [128, 0, 127]).max(axis=1) <= 6)
    assert view.rgb[15, 32, 2] > view.rgb[48, 32, 2]  # top is bluer


def test_projection_consistency():
    """Visible vertices project inside the mask; the projected silhouette equals the mask up to 1 px."""
    mesh = textured_sphere(subdivisions=4)
    S = scale_matrix(*bounding_sphere(mesh.vertices))
    renderer = EmbreeRenderer(mesh, S)
    verts = to_normalised(mesh.vertices, S)
    caster = MeshRayCaster(verts, mesh.faces)
    for cam in Rig(yaw=3, pitch=2, res=96).cameras():
        view = renderer.render(cam)
        # visibility per Embree: the first hit from the camera towards the vertex is the vertex itself
        to_v = verts - cam.center
        dist = np.linalg.norm(to_v, axis=1)
        hits = caster.intersect(np.broadcast_to(cam.center, verts.shape), to_v / dist[:, None])
        visible = hits.depth >= dist - 1e-4
        assert visible.sum() > 100
        pix, _ = cam.project(verts[visible])
        cols, rows = np.rint(pix[:, 0]).astype(int), np.rint(pix[:, 1]).astype(int)
        near = cv2.dilate(view.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert near[rows, cols].all()
        # silhouette of all projected triangles, with sub-pixel precision
        all_pix, _ = cam.project(verts)
        sil = np.zeros_like(view.mask, np.uint8)
        tris = np.rint(all_pix[mesh.faces] * 16).astype(np.int32)
        for tri in tris:  # one call per triangle: fillPoly on many contours fills even-odd
            cv2.fillConvexPoly(sil, tri, 1, lineType=cv2.LINE_8, shift=4)
        diff = sil.astype(bool) ^ view.mask
        m8 = view.mask.astype(np.uint8)
        k = np.ones((3, 3), np.uint8)
        boundary = cv2.dilate(m8, k).astype(bool) & ~cv2.erode(m8, k).astype(bool)
        assert not (diff & ~boundary).any()


def test_renderer_matches_pytorch3d_when_available():
    pytest.importorskip("pytorch3d")
    from pbidr.preprocess.render_pytorch3d import PyTorch3DRenderer

    mesh = textured_sphere(subdivisions=4)
    S = scale_matrix(*bounding_sphere(mesh.vertices))
    ours, theirs = EmbreeRenderer(mesh, S), PyTorch3DRenderer(mesh, S)
    for cam in Rig(yaw=3, res=128).cameras():
        a, b = ours.render(cam), theirs.render(cam)
        assert (a.mask != b.mask).mean() < 0.005
        both = a.mask & b.mask
        mse = np.mean((a.rgb[both].astype(float) - b.rgb[both].astype(float)) ** 2) / 255.0**2
        assert 10 * np.log10(1 / max(mse, 1e-12)) > 30
