"""``train.solver = texels``: what ``pbidr train`` needs to step the texel fit inside its run loop
(locks, checkpoints, exact resume, time budget and logs stay the trainer's).

The model is a ``PBIDRModel`` with the ``displacement_map`` parameterisation; its SDF field holds the
map's grids (the parameters), the albedo map and the light (buffers, refreshed at every checkpoint),
so eval, marching cubes and the renders read everything from the checkpoint.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from pbidr.detail.chart import TexelChart, build_chart, texture_colours
from pbidr.detail.field import DisplacementMapConfig
from pbidr.detail.fit import FitConfig, TexelConfig, TexelObjective, adam_step, seam_pairs
from pbidr.errors import PbidrError
from pbidr.io.mesh import TexturedMesh

DEFAULT_RESOLUTION = 1024  # texels per side of the chart when the mesh has no texture


def map_resolution(resolution: int, mesh: TexturedMesh) -> int:
    """The chart's size (texels per side): ``model.displacement_map.resolution``, or when that is 0 the
    texture's longest side."""
    if resolution > 0:
        return resolution
    if mesh.texture is not None:
        return int(max(mesh.texture.shape[:2]))
    return DEFAULT_RESOLUTION


def fit_config(texel: TexelConfig, dmap: DisplacementMapConfig, learning_rate: float, iters: int = 0) -> FitConfig:
    """FitConfig from a run's ``loss.texel``, ``model.displacement_map``, ``train.learning_rate`` and
    ``train.iters``, the step count when it is set (the trainer counts its own steps)."""
    values = {f.name: getattr(texel, f.name) for f in fields(TexelConfig)}
    values.update(finest_level=dmap.finest_level, coarsest_level=dmap.coarsest_level,
                  max_displacement_mm=dmap.max_displacement, learning_rate=learning_rate)
    if iters > 0:
        values["steps"] = iters
    return FitConfig(**values)


def chart_colours(source: str, chart: TexelChart, mesh: TexturedMesh,
                  scan_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Every texel's colour (H, W, 3) in [0, 1], from ``source`` (``loss.texel.colour_source``), and which
    texels a view sees (H, W) bool, or None when every texel has a colour (texture or vertex colours)."""
    if source == "texture":
        if mesh.texture is None:
            if mesh.vertex_colors is not None:
                from pbidr.detail.atlas import vertex_colours_on_chart

                return vertex_colours_on_chart(mesh, chart), None
            raise PbidrError(f"{mesh.source or 'the scan mesh'}: has no texture; set loss.texel.colour_source = views")
        return texture_colours(mesh, chart.size), None
    from pbidr.detail.views import view_colours

    if scan_dir is None:
        raise PbidrError("loss.texel.colour_source = views needs the scan directory")
    colours, seen = view_colours(chart, scan_dir)
    return np.where(seen[..., None], colours, 0.0), seen


class TexelSolver:
    """The objective, the optimiser and its schedule for one run; ``step(i)`` advances one step."""

    def __init__(self, model, cfg: FitConfig, colour_source: str, mesh: TexturedMesh, scan_dir: Path,
                 device: torch.device, total_steps: int):
        self.model = model
        self.field = model.sdf_network
        self.total_steps = int(total_steps)
        self.cfg = cfg
        res = self.field.grids.size
        self.chart = build_chart(mesh, res)
        colours, seen = chart_colours(colour_source, self.chart, mesh, scan_dir)
        weight = None if seen is None else seen.astype(np.float64)
        self.objective = TexelObjective(self.chart, colours, self.cfg, device, weight=weight,
                                        seams=seam_pairs(self.chart, mesh))
        self.optimizer = torch.optim.Adam(self.field.grids.parameters(), lr=self.cfg.learning_rate)
        base = self.cfg.learning_rate
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: self.objective.learning_rate(step, self.total_steps, base) / base)
        self.field.set_light(self.objective.light)

    def step(self, step: int) -> dict[str, float]:
        terms = adam_step(self.objective, self.field.grids, self.optimizer, step)
        self.scheduler.step()
        return terms

    def refresh_buffers(self) -> None:
        """Store the albedo map the current D leaves (and the light) in the model before a checkpoint."""
        with torch.no_grad():
            self.field.albedo.copy_(self.objective.albedo(self.field.grids()))
        self.field.set_light(self.objective.light)
