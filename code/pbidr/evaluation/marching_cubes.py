"""Marching cubes of an SDF callable, evaluated only where the surface can be.

A dense grid of ``resolution`` cells costs ``(resolution + 1)**3`` SDF queries (135 M at 512); the
zero level set touches a thin shell of it. The grid is cut into blocks that are refined coarse to
fine; a block is dropped when the surface cannot pass through it:

* with ``guide_points`` (dense samples of the coarse mesh) and ``band``: when the block is farther
  than ``band`` from every guide point (scipy cKDTree), and finally every node farther than ``band``;
* with ``lipschitz`` (on by default): when ``|sdf(centre)| > lipschitz * half_diagonal``, i.e. an
  SDF whose gradient norm is at most ``lipschitz`` has no zero inside the block.

skimage's marching cubes then runs per coarse block (``block`` cells, one shared node layer with
each neighbour); a triangle is kept only when all eight corners of its cell were evaluated, and
vertices are merged across block seams by the grid edge they lie on, so the mesh is watertight
wherever the true surface stays inside the evaluated region.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from pbidr.errors import PbidrError

SdfFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LevelSet:
    """The zero level set as a triangle mesh in the frame the SDF was queried in (normalised).

    ``vertices`` (V, 3) float64, ``faces`` (F, 3) int64 with normals toward +sdf (outward).
    ``stats``: n_sdf_evals, dense_evals ((n+1)^3 of the grid), seconds, grid_shape (nodes per
    axis), voxel_size, origin, n_blocks, n_nodes."""

    vertices: np.ndarray
    faces: np.ndarray
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Grid:
    origin: np.ndarray  # (3,) position of node (0, 0, 0)
    voxel: float  # cell edge length
    cells: np.ndarray  # (3,) int64 cells per axis

    @property
    def nodes(self) -> np.ndarray:
        return self.cells + 1

    def linear(self, ijk: np.ndarray) -> np.ndarray:
        """Linear node ids (N,) of integer node coordinates (N, 3)."""
        ny, nz = int(self.nodes[1]), int(self.nodes[2])
        return (ijk[:, 0] * ny + ijk[:, 1]) * nz + ijk[:, 2]

    def unlinear(self, lin: np.ndarray) -> np.ndarray:
        ny, nz = int(self.nodes[1]), int(self.nodes[2])
        return np.stack([lin // (ny * nz), (lin // nz) % ny, lin % nz], axis=1)

    def position(self, ijk: np.ndarray) -> np.ndarray:
        return self.origin + ijk * self.voxel


def make_grid(resolution: int, bounds) -> _Grid:
    """``resolution`` cells along the longest axis of ``bounds``; other axes get as many cells of
    the same size as cover them, centred on the bounds."""
    lo, hi = (np.asarray(b, dtype=np.float64).reshape(3) for b in bounds)
    if not np.all(hi > lo):
        raise PbidrError(f"marching cubes: bounds {lo.tolist()} .. {hi.tolist()} are empty")
    if int(resolution) != resolution or resolution < 8:
        raise PbidrError(f"marching cubes: resolution {resolution} must be an integer of at least 8")
    extent = hi - lo
    voxel = float(extent.max()) / int(resolution)
    cells = np.maximum(1, np.ceil(extent / voxel - 1e-9)).astype(np.int64)
    origin = (lo + hi) / 2.0 - cells * voxel / 2.0
    return _Grid(origin=origin, voxel=voxel, cells=cells)


class _Evaluator:
    """Runs the SDF in chunks of ``chunk`` points on ``device`` and counts the queries."""

    def __init__(self, sdf: SdfFn, device: torch.device, chunk: int, progress: bool):
        self.sdf, self.device, self.chunk, self.progress = sdf, device, max(1, int(chunk)), progress
        self.count = 0

    @torch.no_grad()
    def __call__(self, n: int, points: Callable[[int, int], np.ndarray], desc: str | None = None) -> np.ndarray:
        """SDF (n,) float32 of ``points(start, stop)`` (stop - start, 3): positions are made one
        chunk at a time, so a dense grid never holds all its coordinates at once."""
        out = np.empty(n, dtype=np.float32)
        starts = range(0, n, self.chunk)
        bar = None
        if self.progress and desc and len(starts) > 1:
            from pbidr.utils.progress import progress_bar  # plain lines when stderr is not a terminal

            bar = progress_bar(len(starts), desc=desc, unit="chunk")
        for s in starts:
            e = min(s + self.chunk, n)
            pts = torch.as_tensor(points(s, e), dtype=torch.float32, device=self.device)
            val = self.sdf(pts)
            if val.numel() != len(pts):
                raise PbidrError(f"marching cubes: sdf returned {tuple(val.shape)} for {len(pts)} points (want (N,))")
            out[s:e] = val.detach().reshape(-1).float().cpu().numpy()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        self.count += n
        return out

    def points(self, pts: np.ndarray) -> np.ndarray:
        return self(len(pts), lambda s, e: pts[s:e])

    def nodes(self, grid: "_Grid", nodes: np.ndarray, desc: str | None = None) -> np.ndarray:
        return self(len(nodes), lambda s, e: grid.position(grid.unlinear(nodes[s:e])), desc)


def _pick_device(sdf: SdfFn, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(sdf, torch.nn.Module):
        for p in sdf.parameters():
            return p.device
    return torch.device("cpu")


def _guide_tree(guide_points: np.ndarray | None, band: float | None) -> cKDTree | None:
    """The guide points' k-d tree (None without a guide), after checking the guide and its band."""
    if (guide_points is None) != (band is None):
        raise PbidrError("marching cubes: guide_points and band go together (give both or neither)")
    if guide_points is None:
        return None
    guide_points = np.asarray(guide_points, dtype=np.float64).reshape(-1, 3)
    if len(guide_points) == 0:
        raise PbidrError("marching cubes: guide_points is empty")
    if not band > 0:
        raise PbidrError(f"marching cubes: band {band} must be positive")
    return cKDTree(guide_points)


def _nodes_to_evaluate(grid: _Grid, corners: np.ndarray, ext: np.ndarray, tree: cKDTree | None,
                       band: float | None, dense: bool) -> np.ndarray:
    """Sorted linear ids of the nodes whose SDF marching cubes needs: every node (``dense``), or those of
    the blocks pruning kept, within the band of a guide point when there is a guide."""
    if dense:
        return np.arange(int(np.prod(grid.nodes)), dtype=np.int64)
    nodes = _block_nodes(grid, corners, ext)  # sorted unique linear ids
    if tree is None or not len(nodes):
        return nodes
    node_band = _node_band(band, grid)
    near = np.zeros(len(nodes), dtype=bool)
    for s in range(0, len(nodes), 1 << 22):
        pts = grid.position(grid.unlinear(nodes[s : s + (1 << 22)]))
        near[s : s + len(pts)] = tree.query(pts, distance_upper_bound=node_band, workers=-1)[0] <= node_band
    return nodes[near]


def _drop_off_surface(grid: _Grid, vertices: np.ndarray, faces: np.ndarray, evaluate: _Evaluator,
                      tolerance: float | None, near: np.ndarray | None, radius: float | None
                      ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The mesh without the triangles that have a vertex where |sdf| > ``tolerance`` cells (checked at the
    vertices within ``radius`` of ``near``, or at all of them), the number of triangles dropped and of
    vertices checked. The mesh as it is (none dropped, none checked) without a tolerance or a face."""
    if tolerance is None or not len(faces):
        return vertices, faces, 0, 0
    positions = grid.position(vertices)
    checked = np.ones(len(vertices), dtype=bool)
    if near is not None:
        near = np.asarray(near, dtype=np.float64).reshape(-1, 3)
        if not (radius is not None and radius > 0):
            raise PbidrError("marching cubes: off_surface_near needs a positive off_surface_radius")
        checked = (cKDTree(near).query(positions, distance_upper_bound=radius, workers=-1)[0]
                   <= radius) if len(near) else np.zeros(len(vertices), dtype=bool)
    at_vertices = np.zeros(len(vertices), dtype=np.float32)
    at_vertices[checked] = evaluate.points(positions[checked]) if checked.any() else 0.0
    bad = np.abs(at_vertices) > tolerance * grid.voxel
    drop = bad[faces].any(axis=1)
    vertices, faces = _compact(vertices, faces[~drop])
    return vertices, faces, int(drop.sum()), int(checked.sum())


def extract_level_set(
    sdf: SdfFn,
    resolution: int = 512,
    bounds=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)),
    guide_points: np.ndarray | None = None,
    band: float | None = None,
    chunk: int = 2**18,
    device=None,
    block: int = 32,
    min_block: int = 2,
    lipschitz: float | None = 1.5,
    progress: bool = False,
    off_surface_tolerance: float | None = None,
    off_surface_near: np.ndarray | None = None,
    off_surface_radius: float | None = None,
) -> LevelSet:
    """Zero level set of ``sdf`` ((N, 3) tensor -> (N,) tensor, normalised frame) on a grid of
    ``resolution`` cells along the longest axis of ``bounds`` (any integer >= 8).

    ``guide_points`` (G, 3) and ``band``: the surface is taken to lie within ``band`` of the
    guide, so only nodes within ``band`` plus one cell diagonal of a guide point are evaluated.
    Sample the guide more densely than ``band`` (see :func:`guide_points_from_mesh`): distance to
    the samples over-estimates distance to the surface by up to half their spacing. ``lipschitz``: prune blocks by ``|sdf(centre)|`` assuming the
    gradient norm stays below it (eikonal-trained SDFs are ~1; 1.5 leaves a margin); ``None``
    turns this off, which without a guide means a dense grid (memory grows as resolution^3).
    ``block``: cells per marching-cubes block; ``min_block``: the finest pruning block.
    ``chunk``: points per SDF call. ``device``: where query tensors live (default: the device of
    the SDF module's parameters, else CPU). ``off_surface_tolerance`` (in cells): drop triangles
    with a vertex where ``|sdf| >`` that many cells: a sign change without a zero crossing (the
    coarse-residual SDF flips sign beyond an open mesh border) makes such triangles, a true crossing
    does not. ``off_surface_near`` (B, 3) and ``off_surface_radius``: check only the vertices within
    the radius of these points (the open border, where the flip can happen), so the check costs SDF
    queries near the border instead of at every vertex. Raises PbidrError when no surface is found.
    """
    t0 = time.perf_counter()
    grid = make_grid(resolution, bounds)
    tree = _guide_tree(guide_points, band)
    if lipschitz is not None and not lipschitz > 0:
        raise PbidrError(f"marching cubes: lipschitz {lipschitz} must be positive (or None)")
    block, min_block = max(1, int(block)), max(1, int(min_block))
    evaluate = _Evaluator(sdf, _pick_device(sdf, device), chunk, progress)

    samples = _sample_sdf(grid, tree, band, lipschitz, evaluate, block, min_block)
    coarse = np.unique(samples.corners // block, axis=0) if len(samples.corners) else np.zeros((0, 3), np.int64)
    vertices, faces = _mesh_blocks(grid, samples.nodes, samples.values, coarse, block)
    vertices, faces, n_off_surface, n_checked = _drop_off_surface(
        grid, vertices, faces, evaluate, off_surface_tolerance, off_surface_near, off_surface_radius)
    _require_surface(faces, resolution, evaluate.count, samples.values)
    stats = {
        "n_sdf_evals": int(evaluate.count), "dense_evals": int(np.prod(grid.nodes)),
        **_stage_seconds(t0, samples),
        "grid_shape": [int(x) for x in grid.nodes], "voxel_size": grid.voxel, "origin": grid.origin.tolist(),
        "n_blocks": int(len(coarse)), "n_nodes": int(len(samples.nodes)),
        "n_faces_off_surface_dropped": n_off_surface, "n_vertices_off_surface_checked": n_checked,
    }
    return LevelSet(vertices=grid.position(vertices), faces=faces, stats=stats)


@dataclass
class _Samples:
    """What the sampling stages leave for meshing: the finest kept blocks' corners (B, 3) in cells,
    the evaluated nodes' sorted linear ids (N,) and their SDF (N,) float32, and the
    ``time.perf_counter()`` at the end of pruning, of node selection and of the SDF queries."""

    corners: np.ndarray
    nodes: np.ndarray
    values: np.ndarray
    t_prune: float
    t_nodes: float
    t_sdf: float


def _sample_sdf(grid: _Grid, tree: cKDTree | None, band: float | None, lipschitz: float | None,
                evaluate: _Evaluator, block: int, min_block: int) -> _Samples:
    """Prune the blocks, pick the nodes they need and query the SDF at those nodes."""
    corners, ext = _prune_blocks(grid, tree, band, lipschitz, evaluate, block, min_block)
    t_prune = time.perf_counter()
    nodes = _nodes_to_evaluate(grid, corners, ext, tree, band, dense=tree is None and lipschitz is None)
    t_nodes = time.perf_counter()
    values = evaluate.nodes(grid, nodes, desc="marching cubes: sdf")
    t_sdf = time.perf_counter()
    return _Samples(corners=corners, nodes=nodes, values=values, t_prune=t_prune, t_nodes=t_nodes, t_sdf=t_sdf)


def _require_surface(faces: np.ndarray, resolution: int, n_queries: int, values: np.ndarray) -> None:
    """Fail when meshing left no triangle, with the SDF's range at the evaluated nodes ``values`` (N,):
    an SDF that never changes sign there (wrong bounds, a collapsed network) shows in it."""
    if len(faces) == 0:
        raise PbidrError(
            f"marching cubes: no zero level set found at resolution {resolution} "
            f"({n_queries} sdf queries; sdf range "
            f"{values.min() if len(values) else float('nan'):.3g} .. {values.max() if len(values) else float('nan'):.3g})"
        )


def _stage_seconds(t0: float, samples: _Samples) -> dict[str, float]:
    """The stats' timings: in all, then block pruning, node selection, SDF queries and meshing (to now)."""
    now = time.perf_counter()
    return {"seconds": now - t0, "seconds_prune": samples.t_prune - t0,
            "seconds_nodes": samples.t_nodes - samples.t_prune, "seconds_sdf": samples.t_sdf - samples.t_nodes,
            "seconds_mesh": now - samples.t_sdf}


def _compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the vertices no face uses and renumber the faces."""
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


def _node_band(band: float, grid: _Grid) -> float:
    # A cell the surface crosses has its corners within a cell diagonal of the crossing point.
    return band + math.sqrt(3.0) * grid.voxel


def _prune_blocks(grid, tree, band, lipschitz, evaluate, block, min_block):
    """Coarse-to-fine block pruning. Returns the finest kept blocks' corners and extents (cells)."""
    axes = [np.arange(0, int(c), block) for c in grid.cells]
    corners = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.int64)
    ext = np.minimum(block, grid.cells - corners)
    if tree is None and lipschitz is None:
        return corners, ext  # dense: nothing to prune by
    size = block
    while len(corners):
        centres = grid.position(corners + ext / 2.0)
        half_diag = 0.5 * grid.voxel * np.linalg.norm(ext, axis=1)
        keep = np.ones(len(corners), dtype=bool)
        if tree is not None:
            reach = _node_band(band, grid) + half_diag  # some node of the block may be in the band
            keep &= tree.query(centres, distance_upper_bound=reach.max() + 1e-12, workers=-1)[0] <= reach
        if lipschitz is not None and keep.any():
            val = evaluate.points(centres[keep])
            keep[keep] = np.abs(val) <= lipschitz * half_diag[keep]
        corners, ext = corners[keep], ext[keep]
        if size <= min_block:
            break
        child = (size + 1) // 2
        kids_c, kids_e = [], []
        for off in np.stack(np.meshgrid([0, child], [0, child], [0, child], indexing="ij"), -1).reshape(-1, 3):
            c = corners + off
            e = np.minimum(child, corners + ext - c)
            ok = np.all(e > 0, axis=1)
            kids_c.append(c[ok])
            kids_e.append(e[ok])
        corners, ext = np.concatenate(kids_c), np.concatenate(kids_e)
        size = child
    return corners, ext


def _block_nodes(grid: _Grid, corners: np.ndarray, ext: np.ndarray) -> np.ndarray:
    """Sorted unique linear ids of every node of the given blocks."""
    if len(corners) == 0:
        return np.zeros(0, dtype=np.int64)
    s = int(ext.max())
    offsets = np.stack(np.meshgrid(*[np.arange(s + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    batch = max(1, (1 << 21) // len(offsets))
    parts = []
    for b in range(0, len(corners), batch):
        c, e = corners[b : b + batch], ext[b : b + batch]
        ijk = c[:, None, :] + offsets[None, :, :]
        inside = np.all(offsets[None, :, :] <= e[:, None, :], axis=2)
        parts.append(_sorted_unique(grid.linear(ijk[inside])))
    return _sorted_unique(np.concatenate(parts))


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    # np.unique of numpy >= 2.3 hashes plain 1-D input, which is ~10x slower than sorting here.
    a = np.sort(a)
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if len(a) else a


def _mesh_blocks(grid: _Grid, nodes: np.ndarray, values: np.ndarray, coarse: np.ndarray, block: int):
    """Marching cubes per coarse block; returns vertices in grid units (V, 3) and faces (F, 3)."""
    all_v, all_f, all_k = [], [], []
    n_vert = 0
    for idx in coarse:
        c0 = idx * block
        e = np.minimum(block, grid.cells - c0)
        local = np.stack(np.meshgrid(*[np.arange(k + 1) for k in e], indexing="ij"), -1)
        lin = grid.linear(local.reshape(-1, 3) + c0)
        pos = np.minimum(np.searchsorted(nodes, lin), max(len(nodes) - 1, 0))
        found = (nodes[pos] == lin) if len(nodes) else np.zeros(len(lin), bool)
        found[found] &= np.isfinite(values[pos[found]])  # a NaN from the network counts as unknown
        if not found.any():
            continue
        vals = values[pos[found]]
        if vals.min() > 0.0 or vals.max() < 0.0:
            continue
        # Unevaluated nodes get an arbitrary value; every triangle of a cell that touches one is
        # dropped below, so the value never shows.
        vol = np.ones(len(lin), dtype=np.float32)
        vol[found] = vals
        vol = vol.reshape(tuple(e + 1))
        if vol.min() == vol.max():
            continue
        f3 = found.reshape(tuple(e + 1))
        valid = np.ones(tuple(e), dtype=bool)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    valid &= f3[dx : dx + e[0], dy : dy + e[1], dz : dz + e[2]]
        # 'descent': triangles wind so that normals point toward increasing sdf (outward).
        v, f, _, _ = marching_cubes(vol, 0.0, gradient_direction="descent", allow_degenerate=True)
        cell = np.clip(np.floor(v[f].astype(np.float64).mean(axis=1)).astype(np.int64), 0, e - 1)
        f = f[valid[cell[:, 0], cell[:, 1], cell[:, 2]]].astype(np.int64)
        if len(f) == 0:
            continue
        used, f = np.unique(f, return_inverse=True)
        f = f.reshape(-1, 3)
        v = v[used].astype(np.float64)
        all_k.append(_edge_keys(grid, v, c0, n_vert))
        all_v.append(v + c0)
        all_f.append(f + n_vert)
        n_vert += len(v)
    if not all_f:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts, faces, keys = np.concatenate(all_v), np.concatenate(all_f), np.concatenate(all_k)
    # Two blocks produce bit-identical vertices on the grid edges they share (same two node values,
    # same local coordinate along the edge), so the edge id is an exact merge key.
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    verts, faces = verts[first], inverse.reshape(-1)[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    used, faces = np.unique(faces, return_inverse=True)
    return verts[used], faces.reshape(-1, 3).astype(np.int64)


def _edge_keys(grid: _Grid, v_local: np.ndarray, c0: np.ndarray, offset: int) -> np.ndarray:
    """An int64 key per vertex naming what it lies on: a grid edge (node id * 4 + axis), a grid
    node (node id * 4 + 3), or neither (a cell-interior vertex of Lewiner's tiling: a unique
    negative key)."""
    frac = v_local != np.round(v_local)
    n_frac = frac.sum(axis=1)
    axis = np.where(n_frac == 0, 3, np.argmax(frac, axis=1))
    lower = np.floor(v_local).astype(np.int64) + c0
    keys = grid.linear(lower) * 4 + axis
    interior = n_frac > 1
    keys[interior] = -(offset + np.nonzero(interior)[0] + 1)
    return keys


def border_points(vertices: np.ndarray, faces: np.ndarray, spacing: float) -> np.ndarray:
    """Points (N, 3) along the open border of a triangle mesh (edges of one face only), no farther
    than ``spacing`` apart; (0, 3) for a closed mesh."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if not spacing > 0:
        raise PbidrError(f"border points: spacing {spacing} must be positive")
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, count = np.unique(edges, axis=0, return_counts=True)
    border = unique[count == 1]
    if len(border) == 0:
        return np.zeros((0, 3))
    a, b = vertices[border[:, 0]], vertices[border[:, 1]]
    steps = np.maximum(1, np.ceil(np.linalg.norm(b - a, axis=1) / spacing)).astype(np.int64)
    out = [a]
    for k in np.unique(steps):
        if k == 1:
            continue
        t = (np.arange(1, k) / k)[None, :, None]
        sel = steps == k
        out.append((a[sel][:, None] + t * (b[sel] - a[sel])[:, None]).reshape(-1, 3))
    return np.concatenate(out)


def guide_points_from_mesh(vertices: np.ndarray, faces: np.ndarray, spacing: float) -> np.ndarray:
    """Points (N, 3) on a triangle mesh no farther than about ``spacing`` apart: each face is
    sampled on a barycentric lattice with ``ceil(longest edge / spacing)`` steps per edge."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if not spacing > 0:
        raise PbidrError(f"guide points: spacing {spacing} must be positive")
    tri = vertices[faces]
    edge = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(axis=1)
    steps = np.maximum(1, np.ceil(edge / spacing)).astype(np.int64)
    out = [vertices]
    for k in np.unique(steps):
        if k == 1:
            continue
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        keep = (i + j <= k) & ~(((i == 0) & (j == 0)) | ((i == k) & (j == 0)) | ((i == 0) & (j == k)))
        b = np.stack([k - i[keep] - j[keep], i[keep], j[keep]], axis=1) / k  # (L, 3), corners left out
        sel = tri[steps == k]
        out.append(np.einsum("lk,fkc->flc", b, sel).reshape(-1, 3))
    return np.concatenate(out)
