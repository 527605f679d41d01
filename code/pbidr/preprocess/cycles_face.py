"""The built-in procedural face (pbidr.preprocess.sample) baked by Cycles, to look at and to wire
into the sample generator.

The detailed surface is split in two: a mesh of moderate density (by default a 0.5 mm grid over the
150 x 200 mm face, 240k triangles) carries the folds, wrinkles and bumps it can resolve, so they
cast shadows and occlude; what it cannot (the part of the displacement its piecewise-linear
interpolant misses) goes into the bump map, which tilts the shading normal only.

    python -m pbidr.preprocess.cycles_face -o cycles_face.png [--size 1024] [--samples 64]
        [--grid 301 401] [--compare cycles_face_vs_lambert.png]

It prints the bake's wall and CPU seconds with this machine's fp32 matmul rate, as a speed reference.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pbidr.preprocess.conditions import Lighting
from pbidr.preprocess.cycles import CyclesBake, CyclesLighting, CyclesSkin, DEFAULT_SAMPLES, bake_textures
from pbidr.preprocess.face_model import Face, coarse_normal, coarse_surface, grid_faces
from pbidr.preprocess.face_texture import TexelFields, texel_fields
from pbidr.utils.images import contact_sheet, to_uint8, write_png

FACE_GRID = (301, 401)  # vertices along u and v: a 0.5 mm grid
FILL_SIZE_MM = 800.0
SKY_GRADIENT = 0.3


@dataclass
class FaceBakeInputs:
    """The procedural face as path_traced_texture takes it, and the texel fields behind it."""

    vertices: np.ndarray  # (V, 3) mm: the coarse surface moved by the displacement along its normal
    faces: np.ndarray  # (F, 3)
    uv: np.ndarray  # (V, 2), the grid parameter (face_uv = faces)
    bump_mm: np.ndarray  # (T, T) the displacement the mesh does not resolve
    fields: TexelFields  # albedo, true displacement, today's Lambert shading, per texel


def procedural_face(texture_size: int = 1024, grid: tuple[int, int] = FACE_GRID, seed: int = 0,
                    face: Face | None = None, fields: TexelFields | None = None) -> FaceBakeInputs:
    """The detailed procedural face (``face``: its conditions and seed; default the classic one) on an
    (nu, nv) vertex grid, the true surface the texture is shaded on (no misfit), with the bump map of what
    that grid misses at each texel of a ``texture_size`` texture."""
    face = Face(seed=seed) if face is None else face
    nu, nv = grid
    gu, gv = np.meshgrid(np.linspace(0.0, 1.0, nu), np.linspace(0.0, 1.0, nv))
    u, v = gu.reshape(-1), gv.reshape(-1)
    disp = face.displacement(u, v)
    vertices = coarse_surface(u, v) + disp[:, None] * coarse_normal(u, v)
    if fields is None:
        fields = texel_fields(texture_size, face.seed, face.conditions)
    bump = fields.displacement - grid_interpolant(disp.reshape(nv, nu), fields.u, fields.v)
    return FaceBakeInputs(vertices=vertices, faces=grid_faces(nu, nv), uv=np.stack([u, v], axis=1),
                          bump_mm=bump.astype(np.float32), fields=fields)


def grid_interpolant(values: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The piecewise-linear interpolant of grid_faces' triangulation: ``values`` (nv, nu) at the
    vertices of a regular grid over [0, 1]^2, evaluated at (u, v) -- what a mesh of that grid shows
    between its vertices."""
    nv, nu = values.shape
    x = np.clip(u * (nu - 1), 0.0, nu - 1 - 1e-9)
    y = np.clip(v * (nv - 1), 0.0, nv - 1 - 1e-9)
    iu, iv = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    s, t = x - iu, y - iv
    a, b = values[iv, iu], values[iv, iu + 1]
    c, d = values[iv + 1, iu + 1], values[iv + 1, iu]
    # grid_faces splits each cell along a-c: triangle (a, b, c) where s >= t, (a, c, d) elsewhere.
    return np.where(s >= t, a + s * (b - a) + t * (c - b), a + s * (c - d) + t * (d - a))


def studio_lighting() -> CyclesLighting:
    """Key from the upper right (viewer's right, +x), a weaker wide fill from the left, a dim sky
    a little brighter above than below."""
    return CyclesLighting(key_direction=(0.5, 0.5, 0.71), key_strength=0.75, key_size_mm=300.0,
                          fill_direction=(-0.75, 0.0, 0.66), fill_strength=0.2, fill_size_mm=800.0,
                          sky_strength=0.2, sky_gradient=0.3)


def glossy_skin() -> CyclesSkin:
    return CyclesSkin(roughness=0.35, specular=1.0)


def bake_procedural_face(texture_size: int = 1024, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                         grid: tuple[int, int] = FACE_GRID, threads: int | None = None,
                         lighting: CyclesLighting | None = None, skin: CyclesSkin | None = None
                         ) -> tuple[FaceBakeInputs, CyclesBake]:
    """The face's inputs and its Cycles bake (studio lighting, glossy skin by default)."""
    face = procedural_face(texture_size, grid, seed)
    bake = bake_textures(face.vertices, face.faces, face.uv, face.faces, face.fields.albedo, texture_size,
                         [(lighting or studio_lighting(), skin or glossy_skin())], samples=samples, seed=seed,
                         bump_mm=face.bump_mm, threads=threads)[0]
    return face, bake


def cycles_setup(lighting: Lighting) -> tuple[CyclesLighting, CyclesSkin]:
    """A sample's conditions as Cycles lights and skin: the key (Lambert strength ``diffuse``, an area light
    of ``key_size_mm``), the fill, a sky of ``ambient`` (a little brighter above), and a glossy lobe of
    Blinn-Phong ``exponent`` as a GGX roughness (alpha = sqrt(2 / (e + 2)), roughness = sqrt(alpha)) whose
    strength ``specular`` 0.35 is an IOR-1.4 dielectric's (Principled specular 1)."""
    light = CyclesLighting(key_direction=lighting.key_direction, key_strength=lighting.diffuse,
                           key_size_mm=lighting.key_size_mm, fill_direction=lighting.fill_direction,
                           fill_strength=lighting.fill, fill_size_mm=FILL_SIZE_MM, sky_strength=lighting.ambient,
                           sky_gradient=SKY_GRADIENT)
    roughness = float((2.0 / (lighting.exponent + 2.0)) ** 0.25)
    return light, CyclesSkin(roughness=roughness, specular=float(min(2.0, lighting.specular / 0.35)))


def cycles_texture(fields: TexelFields, face: Face) -> np.ndarray:
    """The texture (T, T, 3) in [0, 1] that Cycles bakes of ``face`` under its conditions (``cycles_samples``
    per texel): what ``pbidr sample`` writes for ``renderer = cycles``."""
    inputs = procedural_face(face.conditions.texture_size, FACE_GRID, face.seed, face, fields)
    lighting, skin = cycles_setup(face.conditions.lighting)
    bake = bake_textures(inputs.vertices, inputs.faces, inputs.uv, inputs.faces, fields.albedo,
                         face.conditions.texture_size, [(lighting, skin)], samples=face.conditions.cycles_samples,
                         seed=face.seed,
                         bump_mm=inputs.bump_mm)[0]
    return bake.texture


def comparison_sheet(face: FaceBakeInputs, bake: CyclesBake) -> np.ndarray:
    """Today's texture (albedo x Lambert of the detailed surface, lit from the upper left) beside the
    Cycles bake, whole, and a crop of the right eye and cheek (the key's side) at about full size."""
    lambert = face.fields.albedo * face.fields.shading[..., None]
    t = bake.texture.shape[0]
    rows, cols = slice(int(0.3 * t), int(0.7 * t)), slice(int(0.55 * t), int(0.95 * t))
    return contact_sheet([[lambert, bake.texture], [lambert[rows, cols], bake.texture[rows, cols]]],
                         labels=[["Lambert (sample.py today)", "Cycles bake"], ["Lambert, crop", "Cycles, crop"]],
                         cell=t // 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Bake the built-in procedural face with Blender Cycles.")
    parser.add_argument("-o", "--output", required=True, type=Path, help="the baked texture (PNG)")
    parser.add_argument("--size", type=int, default=1024, help="texture size (texels)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="Cycles samples per texel")
    parser.add_argument("--seed", type=int, default=0, help="the face's and Cycles' seed")
    parser.add_argument("--grid", type=int, nargs=2, default=FACE_GRID, metavar=("NU", "NV"),
                        help="mesh vertices along u and v (default: a 0.5 mm grid); the bump map holds the rest")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--compare", type=Path, default=None, help="also write a side-by-side with the Lambert texture")
    args = parser.parse_args(argv)
    from pbidr.utils.device import matmul_rate  # torch, only here: the speed reference printed with the timing

    gflops = matmul_rate(1024) / 1e9
    t0, cpu0 = time.perf_counter(), os.times()
    face, bake = bake_procedural_face(args.size, args.samples, args.seed, tuple(args.grid), args.threads)
    cpu = sum(getattr(os.times(), k) - getattr(cpu0, k) for k in ("children_user", "children_system"))
    write_png(args.output, to_uint8(bake.texture))
    if args.compare is not None:
        write_png(args.compare, comparison_sheet(face, bake))
    print(f"{args.output}: {args.size}^2, {args.samples} samples, {len(face.faces)} triangles, exposure "
          f"{bake.exposure:.3f}, clipped {100 * bake.clipped_fraction:.2f}%; bake {bake.seconds['bake_s']:.1f} s, "
          f"Blender process {bake.seconds['process_s']:.1f} s ({cpu:.0f} CPU s), total "
          f"{time.perf_counter() - t0:.1f} s; fp32 matmul {gflops:.0f} GFLOP/s, load average {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
