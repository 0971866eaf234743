"""Trainable interventions in a learned rotated basis (distributed alignment search, DAS).

All of them keep their parameters in float32 and compute in float32, casting the result back
to the activation's dtype, so bfloat16 models train the rotation without precision loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from ..errors import ConfigError
from ..registry import register_intervention
from .base import Intervention


def _need_width(embed_dim, cls_name: str) -> int:
    if embed_dim is None:
        raise ConfigError(
            f"{cls_name}: embed_dim is None — the site's width could not be determined; pass "
            f"intervention_kwargs={{'embed_dim': <width>}} in the RepresentationConfig"
        )
    if not isinstance(embed_dim, int) or embed_dim < 1:
        raise ConfigError(f"{cls_name}: embed_dim must be a positive int, got {embed_dim!r}")
    return embed_dim


class _Orthonormal(nn.Module):
    """``k`` orthonormal directions in ``n`` dims: ``weight`` is ``[k, n]`` with orthonormal rows."""

    def __init__(self, n: int, k: int):
        super().__init__()
        self.proj = orthogonal(nn.Linear(n, k, bias=False))

    @property
    def weight(self) -> torch.Tensor:
        return self.proj.weight

    def forward(self, x):  # x [..., n] -> [..., k]
        return x @ self.proj.weight.T


def _f32(*xs):
    return [x if x is None or x.dtype == torch.float32 else x.float() for x in xs]


def _interchange_mask(iv, subspaces, rotated: torch.Tensor, default_dims: int) -> torch.Tensor:
    mask = iv.subspace_mask(subspaces, rotated)
    if mask is None:
        mask = torch.zeros(rotated.shape[-1], dtype=torch.bool, device=rotated.device)
        mask[:default_dims] = True
    return mask


@register_intervention("rotated_space")
class RotatedSpaceIntervention(Intervention):
    """Rotate base and source by a learned orthogonal ``R``, interchange the chosen rotated
    dims (``subspaces`` / ``subspace_partition``, else the first ``interchange_dim``), rotate back.
    """

    trainable = True

    def __init__(self, embed_dim=None, subspace_partition=None, interchange_dim: int | None = None):
        n = _need_width(embed_dim, type(self).__name__)
        super().__init__(n, subspace_partition)
        if interchange_dim is not None and not 0 <= interchange_dim <= n:
            raise ConfigError(f"interchange_dim must be in 0..{n}, got {interchange_dim!r}")
        self.interchange_dim = n if interchange_dim is None else interchange_dim
        self.rotate_layer = _Orthonormal(n, n)

    def forward(self, base, source=None, subspaces=None):
        dtype = base.dtype
        b, s = _f32(base, source)
        rb, rs = self.rotate_layer(b), self.rotate_layer(s)
        mixed = torch.where(_interchange_mask(self, subspaces, rb, self.interchange_dim), rs, rb)
        return (mixed @ self.rotate_layer.weight).to(dtype)


@register_intervention("low_rank_rotated_space")
class LowRankRotatedSpaceIntervention(Intervention):
    """Interchange inside a learned ``low_rank_dimension``-dim subspace; the orthogonal
    complement of the base is kept: ``base + (mix(source R, base R) - base R) R^T``.
    """

    trainable = True

    def __init__(self, embed_dim=None, subspace_partition=None, low_rank_dimension: int | None = None):
        n = _need_width(embed_dim, type(self).__name__)
        if low_rank_dimension is None:
            raise ConfigError(
                "LowRankRotatedSpaceIntervention needs low_rank_dimension (set it in the "
                "RepresentationConfig)"
            )
        if not isinstance(low_rank_dimension, int) or not 1 <= low_rank_dimension <= n:
            raise ConfigError(
                f"low_rank_dimension must be in 1..{n} (the site's width), got {low_rank_dimension!r}"
            )
        super().__init__(n, subspace_partition)
        self.low_rank_dimension = low_rank_dimension
        self.rotate_layer = _Orthonormal(n, low_rank_dimension)

    def forward(self, base, source=None, subspaces=None):
        dtype = base.dtype
        b, s = _f32(base, source)
        rb, rs = self.rotate_layer(b), self.rotate_layer(s)
        mixed = torch.where(_interchange_mask(self, subspaces, rb, self.low_rank_dimension), rs, rb)
        return (b + (mixed - rb) @ self.rotate_layer.weight).to(dtype)


@register_intervention("boundless_rotated_space")
class BoundlessRotatedSpaceIntervention(Intervention):
    """Rotation plus a learned soft boundary (Boundless DAS): rotated dim ``i`` is taken from the
    source with weight ``sigmoid((boundary * width - i) / temperature)``.

    Anneal the temperature during training (e.g. linearly from 50 to 0.1) with
    :meth:`set_temperature`; the boundary starts at half the width.
    """

    trainable = True

    def __init__(self, embed_dim=None, subspace_partition=None, init_boundary: float = 0.5):
        n = _need_width(embed_dim, type(self).__name__)
        super().__init__(n, subspace_partition)
        self.rotate_layer = _Orthonormal(n, n)
        self.intervention_boundaries = nn.Parameter(torch.tensor([float(init_boundary)]))
        self.register_buffer("temperature", torch.tensor(50.0))
        self.register_buffer("_positions", torch.arange(n, dtype=torch.float32), persistent=False)

    def set_temperature(self, value: float) -> None:
        self.temperature.fill_(float(value))

    def boundary_mask(self) -> torch.Tensor:
        edge = self.intervention_boundaries.clamp(0.0, 1.0) * self.embed_dim
        return torch.sigmoid((edge - self._positions) / self.temperature)

    def forward(self, base, source=None, subspaces=None):
        dtype = base.dtype
        b, s = _f32(base, source)
        rb, rs = self.rotate_layer(b), self.rotate_layer(s)
        m = self.boundary_mask()
        return (((1 - m) * rb + m * rs) @ self.rotate_layer.weight).to(dtype)
