"""Trainable soft masks: learn which dimensions (or rotated dimensions) carry a variable."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_intervention
from .base import Intervention
from .rotated import _f32, _need_width, _Orthonormal


class _SoftMask(nn.Module):
    """``sigmoid(logits / temperature)`` over ``n`` dims; temperature is a saved buffer."""

    def __init__(self, n: int):
        super().__init__()
        self.mask_logits = nn.Parameter(torch.zeros(n))
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self):
        return torch.sigmoid(self.mask_logits / self.temperature)


@register_intervention("sigmoid_mask")
class SigmoidMaskIntervention(Intervention):
    """``(1 - m) * base + m * source`` with a learned per-dimension mask ``m``."""

    trainable = True
    supports_subspaces = False

    def __init__(self, embed_dim=None, subspace_partition=None):
        n = _need_width(embed_dim, type(self).__name__)
        super().__init__(n, subspace_partition)
        self.mask = _SoftMask(n)

    def set_temperature(self, value: float) -> None:
        self.mask.temperature.fill_(float(value))

    def forward(self, base, source=None, subspaces=None):
        dtype = base.dtype
        b, s = _f32(base, source)
        m = self.mask()
        return ((1 - m) * b + m * s).to(dtype)


@register_intervention("sigmoid_mask_rotated_space")
class SigmoidMaskRotatedSpaceIntervention(Intervention):
    """The learned soft mask applied in a learned rotated basis."""

    trainable = True
    supports_subspaces = False

    def __init__(self, embed_dim=None, subspace_partition=None):
        n = _need_width(embed_dim, type(self).__name__)
        super().__init__(n, subspace_partition)
        self.rotate_layer = _Orthonormal(n, n)
        self.mask = _SoftMask(n)

    def set_temperature(self, value: float) -> None:
        self.mask.temperature.fill_(float(value))

    def forward(self, base, source=None, subspaces=None):
        dtype = base.dtype
        b, s = _f32(base, source)
        rb, rs = self.rotate_layer(b), self.rotate_layer(s)
        m = self.mask()
        return (((1 - m) * rb + m * rs) @ self.rotate_layer.weight).to(dtype)
