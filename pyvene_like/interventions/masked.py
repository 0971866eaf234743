"""Trainable soft masks: learn which dimensions (or rotated dimensions) carry a variable.

``mask = sigmoid(logits / temperature)``; the output is ``(1 - mask) * base + mask * source``
(in a learned rotated basis for :class:`SigmoidMaskRotatedSpaceIntervention`). ``temperature``
is a saved buffer: lower it during training (``set_temperature``) to push the mask towards 0/1.
The defaults follow pyvene (temperature 0.01 and logits 0 for the plain mask; temperature 50
and logits 100 for the rotated one). Parameters and computation are float32, as in
:mod:`.rotated`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import register_intervention
from ..types import Partition, Subspaces
from ..validation import check_number
from .rotated import (
    TrainableIntervention,
    _compute_dtype,
    _full_precision,
    _need_width,
    _rotated_interchange,
    _rotated_selection,
    _temperature_value,
    allocating,
    float32_number,
    orthonormal_layer,
)


@register_intervention("sigmoid_mask")
class SigmoidMaskIntervention(TrainableIntervention):
    """``(1 - m) * base + m * source`` with ``m = sigmoid(mask / temperature)`` learned per dim.

    ``subspaces`` (raw dims, or ``subspace_partition`` groups) restrict the mask: dims outside
    them keep the base. Parameters: ``embed_dim`` (``mask``).
    """

    def __init__(self, embed_dim: int | None = None, subspace_partition: Partition = None, temperature: float = 0.01, mask_init: float = 0.0):
        name = type(self).__name__
        n = _need_width(embed_dim, name)
        super().__init__(n, subspace_partition)
        init = float32_number(check_number(mask_init, f"{name}: mask_init"), f"{name}: mask_init")
        with allocating(name, n):
            self.mask = nn.Parameter(torch.full((n,), init))
        self.register_buffer("temperature", torch.tensor(_temperature_value(temperature, name)))

    # get_config: the base's; temperature and mask_init start a buffer and a parameter (state).
    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {}  # with the source equal to the base

    def mask_weights(self) -> torch.Tensor:
        """The ``[embed_dim]`` soft mask (float32)."""
        return torch.sigmoid(self.mask / self.temperature)

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        self._check(base, source)
        with _full_precision(base):
            cdt = _compute_dtype(base)
            m = self.mask_weights().to(cdt)
            if subspaces is not None:
                sel = self.subspace_mask(subspaces, base)  # broadcastable to the units
                m = torch.where(sel, m, 0.0)
            b = base if base.dtype == cdt else base.to(cdt)
            s = source if source.dtype == cdt else source.to(cdt)
            out = b + (s - b) * m
        return out if out.dtype == base.dtype else out.to(base.dtype)


@register_intervention("sigmoid_mask_rotated_space")
class SigmoidMaskRotatedSpaceIntervention(TrainableIntervention):
    """The learned soft mask in a learned rotated basis:
    ``base + ((source - base) R * sigmoid(masks / temperature)) R^T``.

    ``subspaces`` (rotated dims, or ``subspace_partition`` groups) restrict the mask to those
    rotated dims. Parameters: ``embed_dim**2 + embed_dim`` (rotation and ``masks``).
    """

    def __init__(self, embed_dim: int | None = None, subspace_partition: Partition = None, temperature: float = 50.0, mask_init: float = 100.0):
        name = type(self).__name__
        n = _need_width(embed_dim, name)
        super().__init__(n, subspace_partition)
        init = float32_number(check_number(mask_init, f"{name}: mask_init"), f"{name}: mask_init")
        with allocating(name, n):
            self.rotate_layer = orthonormal_layer(n)
            self.masks = nn.Parameter(torch.full((n,), init))
        self.register_buffer("temperature", torch.tensor(_temperature_value(temperature, name)))

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {}  # with the source equal to the base

    def mask_weights(self) -> torch.Tensor:
        """The ``[embed_dim]`` soft mask over rotated dims (float32)."""
        return torch.sigmoid(self.masks / self.temperature)

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        self._check(base, source)
        with _full_precision(base):
            soft = self.mask_weights()
            sel = None
            if subspaces is not None:
                sel = _rotated_selection(self, subspaces, base, self.embed_dim)
                if not isinstance(sel, torch.Tensor) or sel.dtype != torch.bool:
                    # same dims for every example: zero the mask elsewhere, keep the full R
                    keep = torch.zeros(self.embed_dim, dtype=torch.bool, device=soft.device)
                    keep[sel] = True
                    sel = keep
        return _rotated_interchange(self, base, source, sel=sel, soft=soft)
