"""PBIDR's three appearance MLPs. Each returns raw outputs; the model applies (tanh + 1) / 2.

- diffuse shading  D(n_mesh)            : lighting on the smooth coarse surface (low frequency, so it
                                          cannot explain fine geometry; that detail must go to the SDF);
- specular shading S(n_sdf, view)       : the view-dependent term, driven by the SDF normal, which is
                                          how the fine geometric detail is supervised;
- albedo           A(x, feature)        : spatially varying reflectance.
rgb = D * A + S (in [0, 1], then mapped to [-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from pbidr.model.embedder import PositionalEncoding
from pbidr.model.sdf_network import make_linear
from pbidr.utils.config import Config, setting


@dataclass
class _ShadingMLPConfig(Config):
    """What the two shading networks' blocks share (their own encodings' fields follow these)."""

    dims: list[int] = setting([128], "hidden layer widths", entries_positive=True)
    d_out: int = setting(1, "1: grey shading (the original's), 3: rgb", choices=(1, 3))
    weight_norm: bool = setting(True, "weight normalisation on every layer")


@dataclass
class DiffuseNetworkConfig(_ShadingMLPConfig):
    """``model.diffuse_network``: the diffuse shading D(n) of the coarse (or SDF) normal."""

    multires: int = setting(6, "positional-encoding frequencies of the normal (the original's multires_view)")


@dataclass
class SpecularNetworkConfig(_ShadingMLPConfig):
    """``model.specular_network``: the specular shading S(n_sdf, view)."""

    multires_view: int = setting(4, "positional-encoding frequencies of the view direction")
    multires_normal: int = setting(4, "positional-encoding frequencies of the SDF normal (the original uses "
                                      "multires_view)")


@dataclass
class AlbedoNetworkConfig(Config):
    """``model.albedo_network``: the albedo A(x, feature)."""

    dims: list[int] = setting([256, 256, 256, 256], "hidden layer widths", entries_positive=True)
    weight_norm: bool = setting(True, "weight normalisation on every layer")
    multires: int = setting(4, "positional-encoding frequencies of the point (the original's multires_view)")


class _MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, d_in: int, dims: Sequence[int], d_out: int, weight_norm: bool):
        super().__init__()
        widths = [int(d_in)] + [int(d) for d in dims] + [int(d_out)]
        self.layers = nn.ModuleList(
            make_linear(widths[i], widths[i + 1], weight_norm) for i in range(len(widths) - 1)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, lin in enumerate(self.layers):
            h = lin(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h


class DiffuseShadingNetwork(nn.Module):
    """Coarse-mesh normal (N, 3) -> raw diffuse shading (N, d_out). ``d_out = 1`` is grey shading
    (the original's choice); the model broadcasts it to 3 channels."""

    def __init__(self, dims: Sequence[int] = (256, 256), d_out: int = 3, weight_norm: bool = True, multires: int = 0):
        super().__init__()
        self.d_out = int(d_out)
        self.embed_normal = PositionalEncoding(multires, 3)
        self.mlp = _MLP(self.embed_normal.out_dim, dims, d_out, weight_norm)

    def forward(self, mesh_normals: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed_normal(mesh_normals))


class SpecularShadingNetwork(nn.Module):
    """SDF normal (N, 3) and view direction (N, 3, towards the camera) -> raw specular (N, d_out).
    ``multires_view`` encodes the view direction, ``multires_normal`` the normal (the original
    encodes both with the same frequency count)."""

    def __init__(
        self,
        dims: Sequence[int] = (256, 256),
        d_out: int = 3,
        weight_norm: bool = True,
        multires_view: int = 4,
        multires_normal: int = 0,
    ):
        super().__init__()
        self.d_out = int(d_out)
        self.embed_normal = PositionalEncoding(multires_normal, 3)
        self.embed_view = PositionalEncoding(multires_view, 3)
        self.mlp = _MLP(self.embed_normal.out_dim + self.embed_view.out_dim, dims, d_out, weight_norm)

    def forward(self, normals: torch.Tensor, view_dirs: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.embed_normal(normals), self.embed_view(view_dirs)], dim=-1))


class AlbedoNetwork(nn.Module):
    """Surface point (N, 3) and SDF feature (N, feature_dim) -> raw albedo (N, 3). ``multires``
    encodes the point."""

    def __init__(
        self,
        feature_dim: int = 256,
        dims: Sequence[int] = (512, 512, 512, 512),
        weight_norm: bool = True,
        multires: int = 0,
    ):
        super().__init__()
        self.d_out = 3
        self.embed_point = PositionalEncoding(multires, 3)
        self.mlp = _MLP(self.embed_point.out_dim + int(feature_dim), dims, 3, weight_norm)

    def forward(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.embed_point(points), features], dim=-1))


def make_shading_networks(diffuse: DiffuseNetworkConfig, specular: SpecularNetworkConfig, albedo: AlbedoNetworkConfig,
                          feature_dim: int) -> tuple[DiffuseShadingNetwork, SpecularShadingNetwork, AlbedoNetwork]:
    """The three networks of the model conf (``feature_dim`` = ``feature_vector_size``), built in this
    order (their random initialisation draws from torch's global RNG)."""
    return (
        DiffuseShadingNetwork(dims=diffuse.dims, d_out=diffuse.d_out, weight_norm=diffuse.weight_norm,
                              multires=diffuse.multires),
        SpecularShadingNetwork(dims=specular.dims, d_out=specular.d_out, weight_norm=specular.weight_norm,
                               multires_view=specular.multires_view, multires_normal=specular.multires_normal),
        AlbedoNetwork(feature_dim=feature_dim, dims=albedo.dims, weight_norm=albedo.weight_norm,
                      multires=albedo.multires),
    )
