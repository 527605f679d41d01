"""Triangle meshes over a planar-like edge graph: the graph's triangles as a disc, its holes closed,
one orientation over it, and folds in the plane taken out.

``triangles_from_edges`` takes the edge graph's 3-cliques less the separating ones (a 3-cycle
around a vertex is not a face), closes every hole but the outline by ear clipping along the
shortest diagonals, orients the triangles consistently (normals toward +z) and checks that the
result is one disc. ``untangle`` moves vertices in the plane until no triangle is folded over.

The photo front end (``pbidr.photo.face_mesh``) uses them on MediaPipe's face-mesh edges, which
leave out the triangles that close the eyes and the mouth; nothing here depends on MediaPipe. The
error messages still speak of the "face-mesh graph", the graph they are used on.
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np

from pbidr.errors import PbidrError


def triangles_from_edges(edges: np.ndarray, xy: np.ndarray, hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Triangulated disc over the vertices of a planar-like edge graph.

    edges (E, 2) vertex indices (either direction, duplicates allowed); xy (V, 2) positions in a
    right-handed plane (x right, y up). Returns faces (F, 3), oriented consistently with normals
    toward +z (counter-clockwise in ``xy`` for most of the area), and filled (F,) bool marking the
    triangles added to close holes. Raises ``PbidrError`` when the graph is not a disc with holes;
    ``hint`` (how the caller's input can be fixed) ends the message when the result is not one disc.
    """
    und = np.unique(np.sort(np.asarray(edges, dtype=np.int64), axis=1), axis=0)
    und = und[und[:, 0] != und[:, 1]]
    neighbours: dict[int, set[int]] = defaultdict(set)
    for a, b in und.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    cliques = sorted({tuple(sorted((a, b, c))) for a, b in und.tolist() for c in neighbours[a] & neighbours[b]})
    faces = _drop_separating(cliques)
    loops = _boundary_loops(faces)
    if not loops:
        raise PbidrError("face-mesh graph has no boundary (expected an open face surface)")
    # The face's outline encloses every other loop, so it has the largest area.
    outer = int(np.argmax([abs(_polygon_area(xy[loop])) for loop in loops]))
    filled = [tri for k, loop in enumerate(loops) if k != outer for tri in _fill_hole(loop, xy)]
    all_faces = np.array(faces + filled, dtype=np.int64)
    is_filled = np.zeros(len(all_faces), dtype=bool)
    is_filled[len(faces):] = True
    all_faces = _orient(all_faces, xy)
    _check_disc(all_faces, len(neighbours), hint)
    return all_faces, is_filled


def _edge_faces(faces: list[tuple[int, int, int]] | np.ndarray) -> dict[tuple[int, int], list[int]]:
    table: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k, (a, b, c) in enumerate(np.asarray(faces).tolist()):
        for e in ((a, b), (b, c), (c, a)):
            table[(min(e), max(e))].append(k)
    return table


def _drop_separating(cliques: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Remove 3-cycles that are not faces. Each edge of a separating cycle also lies on the two real
    faces beside it, so all three of its edges are shared by three or more cliques; a real face has
    at least one edge shared by two (unless separating cycles nest, which ``_check_disc`` would catch)."""
    shared = _edge_faces(cliques)
    keep = []
    for a, b, c in cliques:
        over = [len(shared[(min(e), max(e))]) > 2 for e in ((a, b), (b, c), (c, a))]
        if not all(over):
            keep.append((a, b, c))
    return keep


def _boundary_loops(faces: list[tuple[int, int, int]]) -> list[list[int]]:
    """Closed loops of the edges that lie on exactly one face."""
    table = _edge_faces(faces)
    if any(len(f) > 2 for f in table.values()):
        raise PbidrError("face-mesh graph is not a manifold surface (an edge lies on three triangles)")
    nxt: dict[int, list[int]] = defaultdict(list)
    for (a, b), fs in table.items():
        if len(fs) == 1:
            nxt[a].append(b)
            nxt[b].append(a)
    if any(len(n) != 2 for n in nxt.values()):
        raise PbidrError("face-mesh graph has a pinched boundary (a vertex on two holes)")
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            a, b = nxt[cur]
            step = b if a == prev else a
            if step == start:
                break
            loop.append(step)
            seen.add(step)
            prev, cur = cur, step
        loops.append(loop)
    return loops


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _fill_hole(loop: list[int], xy: np.ndarray) -> list[tuple[int, int, int]]:
    """Close a hole (an eye, the mouth) by ear clipping, always cutting the shortest diagonal:
    on an eye or a mouth this zips the two lids or lips together as the canonical face mesh
    does, and unlike a plain zip it stays inside a crescent-shaped (smiling) mouth."""
    ring = list(loop)
    if len(ring) < 3:
        raise PbidrError(f"face-mesh graph has a degenerate hole of {len(ring)} vertices")
    orientation = np.sign(_polygon_area(xy[ring])) or 1.0
    tris = []
    while len(ring) > 3:
        best, best_len = None, np.inf
        for k in range(len(ring)):
            a, b, c = ring[k - 1], ring[k], ring[(k + 1) % len(ring)]
            pa, pb, pc = xy[a], xy[b], xy[c]
            if orientation * _cross2(pb - pa, pc - pa) <= 0:
                continue  # reflex corner: the cut would run outside the hole
            others = [v for v in ring if v not in (a, b, c)]
            if others and _inside_triangle(xy[others], pa, pb, pc, orientation).any():
                continue
            length = float(np.linalg.norm(pc - pa))
            if length < best_len:
                best, best_len = k, length
        if best is None:  # only a self-touching outline lands here; any corner will do
            best = 1
        tris.append((ring[best - 1], ring[best], ring[(best + 1) % len(ring)]))
        del ring[best]
    tris.append(tuple(ring))
    return tris


def _cross2(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _inside_triangle(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, orientation: float) -> np.ndarray:
    """(N,) points of ``p`` (N, 2) inside or on the triangle abc of the given orientation."""
    return ((orientation * _cross2(b - a, p - a) >= 0) & (orientation * _cross2(c - b, p - b) >= 0)
            & (orientation * _cross2(a - c, p - c) >= 0))


def _orient(faces: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """One consistent winding over the surface (each inner edge used once each way), then the
    one of the two whose projected area is positive: normals toward +z."""
    faces = faces.copy()
    table = _edge_faces(faces)
    done = np.zeros(len(faces), dtype=bool)
    for seed in range(len(faces)):
        if done[seed]:
            continue
        done[seed] = True
        queue = deque([seed])
        while queue:
            k = queue.popleft()
            a, b, c = faces[k]
            for u, v in ((a, b), (b, c), (c, a)):
                for m in table[(min(u, v), max(u, v))]:
                    if done[m]:
                        continue
                    # a consistent neighbour runs the shared edge the other way (v -> u)
                    fa, fb, fc = faces[m]
                    if (fa, fb) == (u, v) or (fb, fc) == (u, v) or (fc, fa) == (u, v):
                        faces[m] = faces[m][::-1].copy()
                    done[m] = True
                    queue.append(m)
    if signed_areas(xy, faces).sum() < 0:
        faces = faces[:, ::-1].copy()
    return faces


def _check_disc(faces: np.ndarray, n_vertices: int, hint: str) -> None:
    table = _edge_faces(faces)
    counts = np.array([len(f) for f in table.values()])
    boundary = int((counts == 1).sum())
    used = len(np.unique(faces))
    if (counts > 2).any() or len(_boundary_loops([tuple(f) for f in faces.tolist()])) != 1 \
            or used != n_vertices or len(faces) != 2 * n_vertices - boundary - 2:
        raise PbidrError(f"face-mesh graph does not close into one disc ({len(faces)} triangles over {used} of "
                         f"{n_vertices} vertices, {boundary} boundary edges){hint}")


def signed_areas(xy: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Signed areas (F,) of triangles in the plane, positive when counter-clockwise (normal toward +z)."""
    a, b, c = xy[faces[:, 0]], xy[faces[:, 1]], xy[faces[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def untangle(xy: np.ndarray, faces: np.ndarray, min_relative_area: float = 0.01,
             max_iterations: int = 200) -> tuple[np.ndarray, int]:
    """Move vertices in the plane until no triangle is folded over (signed area below
    ``min_relative_area`` x the median area), the smallest change that makes the mesh a height
    field over the photo.

    MediaPipe's surface turns away from the camera in thin slivers (the upper lip's inner edge,
    the jaw at the outline). The photo cannot see those, and a texture projected from it would
    paint them with the pixels of the surface in front. Each step moves the vertices of the folded
    triangles halfway to the mean of their neighbours (a boundary vertex: of its two boundary
    neighbours, so the outline keeps its shape). Returns the new positions (V, 2) and the number
    of triangles still folded (0 unless ``max_iterations`` ran out).
    """
    import scipy.sparse as sp

    xy = np.array(xy, dtype=np.float64)
    n = len(xy)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    und = np.sort(edges, axis=1)
    uniq, counts = np.unique(und, axis=0, return_counts=True)
    boundary = uniq[counts == 1]
    on_boundary = np.zeros(n, dtype=bool)
    on_boundary[boundary.ravel()] = True
    # interior vertices average their whole 1-ring, boundary vertices their boundary neighbours
    pairs = np.concatenate([uniq, uniq[:, ::-1]])
    pairs = np.concatenate([pairs[~on_boundary[pairs[:, 0]]], boundary, boundary[:, ::-1]])
    ring = sp.csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    ring = sp.diags(1.0 / np.maximum(ring.sum(axis=1).A.ravel(), 1.0)) @ ring
    threshold = min_relative_area * float(np.median(np.abs(signed_areas(xy, faces))))
    for _ in range(max_iterations):
        folded = signed_areas(xy, faces) < threshold
        if not folded.any():
            return xy, 0
        move = np.unique(faces[folded])
        xy[move] = 0.5 * xy[move] + 0.5 * (ring @ xy)[move]
    return xy, int((signed_areas(xy, faces) < threshold).sum())
