"""Trainable interventions in a learned rotated basis (distributed alignment search, DAS).

``R`` is the ``[embed_dim, k]`` matrix ``rotate_layer.weight`` with orthonormal columns
(``k == embed_dim`` for a full rotation), kept orthonormal by a parametrization (torch's
orthogonal one for a full rotation; a QR one for ``k < embed_dim``, see
:class:`_Orthonormalize`). As in pyvene, ``rotate_layer(x) == x @ rotate_layer.weight`` gives the rotated
coordinates and ``y @ rotate_layer.weight.T`` rotates back.

Every intervention here computes ``base + ((source - base) R * m) R^T`` for a (hard or soft)
mask ``m`` over the rotated dims. For a full rotation this equals "rotate base and source,
interchange the chosen rotated dims, rotate back", and it keeps the base exactly where nothing
is interchanged.

Precision: parameters stay float32 whatever the module is cast to (an orthogonal matrix in
bfloat16 is orthogonal only to about 1e-2, and torch has no bfloat16 Householder kernel on CPU),
and the computation runs in float32 (outside autocast), with the result cast back to the
activation's dtype. A bfloat16 model trains a float32 rotation.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

from ..errors import ConfigError, LocationError, ShapeError
from ..registry import register_intervention
from ..types import Partition, Subspaces
from ..validation import check_fits_dtype, check_number, check_positive_int, is_int
from .base import Intervention, check_partition, padded, partition_groups, subspace_layout

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# -- shared pieces ---------------------------------------------------------------------------
def _need_width(embed_dim, cls_name: str) -> int:
    if embed_dim is None:
        raise ConfigError(
            f"{cls_name}: embed_dim is None — the site's width could not be determined; pass "
            f"intervention_kwargs={{'embed_dim': <width>}} in the RepresentationConfig"
        )
    return check_positive_int(embed_dim, f"{cls_name}: embed_dim")


@contextlib.contextmanager
def allocating(cls_name: str, embed_dim: int):
    """Turn a failed allocation of an intervention's parameters (an ``embed_dim`` far too large)
    into a ConfigError naming ``embed_dim``."""
    try:
        yield
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"{cls_name}: embed_dim={embed_dim} is too large: its parameters cannot be allocated "
            f"({first}); give the site's width"
        ) from None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _full_precision(x: torch.Tensor):
    """A context that turns autocast off on ``x``'s device (when it is on)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


class RotateLayer(nn.Module):
    """``x @ weight`` with ``weight`` ``[n, k]`` (``k <= n``), as pyvene's ``RotateLayer``.

    Wrapped by :func:`torch.nn.utils.parametrizations.orthogonal`, the ``[n, k]`` weight has
    orthonormal columns: a full rotation when ``k == n``, a projection onto ``k`` orthonormal
    directions otherwise.
    """

    def __init__(self, n: int, k: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n if k is None else k))
        nn.init.orthogonal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class _Orthonormalize(nn.Module):
    """Parametrization of a tall ``[n, k]`` matrix by the Q factor of its QR decomposition.

    Used instead of torch's Householder map for ``k < n``: that map reads the diagonal of its
    stored matrix as signs through ``int()``, so any optimiser step that touches the diagonal
    (AdamW's default weight decay turns 1.0 into 0.99999, which truncates to 0) zeroes columns
    and the projection stops being orthonormal. The Q factor does not care about the scale of
    its input, and its columns' signs are fixed (``diag(R) > 0``) so the map is continuous.
    Cost ``O(n k^2)`` like Householder.
    """

    def forward(self, X):
        Q, Rf = torch.linalg.qr(X)
        sign = torch.where(torch.diagonal(Rf, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(Q.dtype)
        return Q * sign.unsqueeze(-2)

    def right_inverse(self, W):
        return W


def orthonormal_layer(n: int, k: int | None = None) -> RotateLayer:
    """A :class:`RotateLayer` whose ``[n, k]`` weight is kept with orthonormal columns.

    A full rotation (``k == n``) uses torch's orthogonal parametrization (matrix exponential,
    as pyvene); ``k < n`` uses :class:`_Orthonormalize`. Either way the trainable tensor is
    ``rotate_layer.parametrizations.weight.original``.
    """
    if k is None or k == n:
        return orthogonal(RotateLayer(n))
    layer = RotateLayer(n, k)
    parametrize.register_parametrization(layer, "weight", _Orthonormalize())
    return layer


def _temperature_value(value, cls_name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.dtype.is_floating_point:
            raise ConfigError(
                f"{cls_name}: temperature must be a positive finite number (or a one-element "
                f"floating-point tensor), got {value!r}"
            )
        value = value.item()
    return float32_number(check_number(value, f"{cls_name}: temperature", positive=True),
                          f"{cls_name}: temperature")




def float32_number(value: float, field: str) -> float:
    """A checked number that must also fit the float32 buffer or parameter it starts (no
    silent overflow to inf, no positive temperature rounded to 0)."""
    return check_fits_dtype(value, field, torch.float32)


class TrainableIntervention(Intervention):
    """Base of the trainable interventions: float32 parameters and buffers, whatever the cast.

    ``module.to(torch.bfloat16)`` (or ``.half()``) moves the module but leaves its floating
    parameters and buffers in float32; the forward passes cast activations themselves.
    """

    checks_width = True

    trainable = True

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for mod in self.modules():
            for p in mod._parameters.values():
                if p is not None and p.dtype in _LOW_PRECISION:
                    p.data = p.data.float()
                    if p.grad is not None:
                        p.grad = p.grad.float()
            for name, b in mod._buffers.items():
                if b is not None and b.dtype in _LOW_PRECISION:
                    mod._buffers[name] = b.float()
        return self

    # -- temperature (for the interventions that have one) -----------------------------------
    def set_temperature(self, value: float | torch.Tensor) -> None:
        """Set the mask's temperature (a saved buffer); a positive number or 0-d tensor."""
        if not hasattr(self, "temperature"):
            raise ConfigError(f"{type(self).__name__} has no temperature")
        self.temperature.fill_(_temperature_value(value, type(self).__name__))

    def get_temperature(self) -> torch.Tensor:
        return self.temperature

    # -- checks ----------------------------------------------------------------------------------
    def _check(self, base, source, needs_source: bool = True):
        name = type(self).__name__
        if base.shape[-1] != self.embed_dim:
            raise ShapeError(
                f"{name} was built for width {self.embed_dim} (embed_dim) but the site's units "
                f"have width {base.shape[-1]}; drop intervention_kwargs['embed_dim'] or set it to "
                f"{base.shape[-1]}"
            )
        if needs_source and source is None:
            raise ConfigError(f"{name} needs a source: give sources or source_representations")

    def _no_subspaces(self, subspaces):
        if subspaces is not None:
            raise ConfigError(
                f"subspaces: {type(self).__name__} does not take subspaces (it learns its own "
                f"mask); pass None for it"
            )


def _rotated_selection(iv: Intervention, subspaces, base: torch.Tensor, width: int):
    """Which of ``width`` rotated dims ``subspaces`` selects.

    Returns a ``slice`` or a 1-d index tensor when every row selects the same dims (the usual
    DAS case: the rotation is then cut to those columns), else a boolean mask broadcastable to
    the units (per example, per unit or both: :func:`~.base.subspace_layout`). Ids are rotated
    dims, or ``subspace_partition`` groups of them.
    """
    name = type(iv).__name__
    bsz, device = base.shape[0], base.device
    if (isinstance(subspaces, torch.Tensor) and subspaces.dim() == 2 and subspaces.shape[0] == bsz
            and subspaces.numel() and not subspaces.dtype.is_floating_point and subspaces.dtype != torch.bool):
        # A [batch, k] id tensor (what the trainer's collator makes): checked with tensor ops.
        ids = subspaces
        lo, hi = int(ids.min()), int(ids.max())
        rows = [ids[0].tolist()] if bool((ids == ids[0]).all()) else None
        cover = (bsz, 1) if base.dim() == 3 else (bsz,)
    else:
        rows, cover = subspace_layout(subspaces, base, iv.use_fast)
        lo, hi = min(min(r) for r in rows), max(max(r) for r in rows)  # ints: checked there
        first = rows[0]
        ids = None if all(r == first for r in rows) else torch.as_tensor(padded(rows), dtype=torch.long, device=device)
        rows = [first] if ids is None else None
    part = iv.subspace_partition
    if part is None:
        if lo < 0 or hi >= width:
            raise LocationError(
                f"subspaces: dimension {hi if hi >= width else lo} is past the rotation width "
                f"{width} of {name} (subspace ids index the rotated space: accepted 0..{width - 1}, "
                f"or set subspace_partition to address groups of rotated dimensions)"
            )
    elif lo < 0 or hi >= len(part):
        raise LocationError(
            f"subspaces: subspace id {hi if hi >= len(part) else lo} is past subspace_partition "
            f"{part} (accepted ids: 0..{len(part) - 1}), which splits the {width} rotated dims "
            f"of {name}"
        )
    if rows is not None:  # every row selects the same dims
        first = rows[0]
        if part is None:
            dims = sorted(set(first))
        else:
            groups = partition_groups(part)
            dims = sorted({d for i in first for d in groups[i]})
        if dims[-1] - dims[0] + 1 == len(dims):
            return slice(dims[0], dims[-1] + 1)
        return torch.tensor(dims, dtype=torch.long, device=device)
    ids = ids.to(device=device, dtype=torch.long)  # [N, K]
    if part is None:
        mask = torch.zeros(ids.shape[0], width, dtype=torch.bool, device=device)
        mask.scatter_(1, ids, True)
    else:
        mask = iv._table(width, device)[ids].any(dim=1)
    return mask.view(*cover, width)


def _rotated_interchange(iv, base, source, sel=None, soft=None):
    """``base + ((source - base) R [* sel or soft]) R^T`` in float32, cast back to base's dtype.

    ``sel``: ``None`` (every column of R), a ``slice`` / index tensor of columns, or a
    ``[batch, 1, k]`` boolean mask; ``soft``: an optional ``[k]`` weight per rotated dim.
    """
    with _full_precision(base):
        cdt = _compute_dtype(base)
        R = iv.rotate_layer.weight
        if R.dtype != cdt:
            R = R.to(cdt)
        mask = None
        if isinstance(sel, slice) or (isinstance(sel, torch.Tensor) and sel.dtype == torch.long):
            R = R[:, sel]
        elif sel is not None:
            mask = sel
        b = base if base.dtype == cdt else base.to(cdt)
        s = source if source.dtype == cdt else source.to(cdt)
        diff = (s - b) @ R
        if soft is not None:
            diff = diff * soft.to(cdt)
        if mask is not None:
            diff = torch.where(mask, diff, 0.0)
        out = b + diff @ R.T
    return out if out.dtype == base.dtype else out.to(base.dtype)


# -- the interventions ---------------------------------------------------------------------------
@register_intervention("rotated_space")
class RotatedSpaceIntervention(TrainableIntervention):
    """DAS: rotate base and source by a learned orthogonal ``R`` (``[embed_dim, embed_dim]``),
    interchange the chosen rotated dims, rotate back.

    The chosen dims are given per call by ``subspaces`` (rotated dims, or groups of them with
    ``subspace_partition``), else they are the first ``interchange_dim`` (default: all, which is
    the vanilla interchange; ``0`` leaves the base untouched). Parameters: ``embed_dim**2``.
    """

    def __init__(self, embed_dim: int | None = None, subspace_partition: Partition = None, interchange_dim: int | None = None):
        n = _need_width(embed_dim, type(self).__name__)
        super().__init__(n, subspace_partition)
        self.interchange_dim = n
        if interchange_dim is not None:
            self.set_interchange_dim(interchange_dim)
        with allocating(type(self).__name__, n):
            self.rotate_layer = orthonormal_layer(n)

    def set_interchange_dim(self, interchange_dim: int) -> None:
        """Interchange the first ``interchange_dim`` rotated dims when no subspaces are given."""
        if isinstance(interchange_dim, torch.Tensor) and interchange_dim.numel() == 1 and not (
                interchange_dim.dtype.is_floating_point or interchange_dim.dtype.is_complex
                or interchange_dim.dtype == torch.bool):
            interchange_dim = int(interchange_dim.item())
        if not is_int(interchange_dim) or not (
            0 <= interchange_dim <= self.embed_dim
        ):
            raise ConfigError(
                f"{type(self).__name__}: interchange_dim must be an int in 0..{self.embed_dim} "
                f"(the rotation width), got {interchange_dim!r}"
            )
        self.interchange_dim = int(interchange_dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "interchange_dim": self.interchange_dim}

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {}  # with the source equal to the base

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        self._check(base, source)
        if subspaces is not None:
            sel = _rotated_selection(self, subspaces, base, self.embed_dim)
        elif self.interchange_dim == 0:
            return base
        elif self.interchange_dim == self.embed_dim:
            sel = None
        else:
            sel = slice(0, self.interchange_dim)
        return _rotated_interchange(self, base, source, sel)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, interchange_dim={self.interchange_dim}"


@register_intervention("low_rank_rotated_space")
class LowRankRotatedSpaceIntervention(TrainableIntervention):
    """Interchange inside a learned ``low_rank_dimension``-dim subspace and keep the rest of the
    base: ``base + (source R - base R) R^T`` with ``R`` ``[embed_dim, low_rank_dimension]``
    (orthonormal columns).

    ``subspaces`` restrict the interchange to some of the ``low_rank_dimension`` rotated dims
    (or ``subspace_partition`` groups of them). Parameters: ``embed_dim * low_rank_dimension``.
    """

    def __init__(self, embed_dim: int | None = None, subspace_partition: Partition = None, low_rank_dimension: int | None = None):
        name = type(self).__name__
        n = _need_width(embed_dim, name)
        if low_rank_dimension is None:
            raise ConfigError(
                f"{name} needs low_rank_dimension: set RepresentationConfig(..., "
                f"low_rank_dimension=r) with 1 <= r <= {n} (the site's width)"
            )
        if not is_int(low_rank_dimension) or not 1 <= low_rank_dimension <= n:
            raise ConfigError(
                f"low_rank_dimension must be in 1..{n} (the site's width), got {low_rank_dimension!r} "
                f"(embed_dim={n})"
            )
        part = check_partition(subspace_partition, None)
        # The furthest dim any entry reaches: entries may be [start, end) pairs or dim lists, in any order.
        reach = None if part is None else max(d for g in partition_groups(part) for d in g) + 1
        if reach is not None and reach > low_rank_dimension:
            raise ConfigError(
                f"subspace_partition {subspace_partition!r} reaches dimension {reach} but the "
                f"low-rank rotation has only low_rank_dimension={low_rank_dimension} rotated dims"
            )
        super().__init__(n, part)
        self.low_rank_dimension = int(low_rank_dimension)
        with allocating(type(self).__name__, n):
            self.rotate_layer = orthonormal_layer(n, low_rank_dimension)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "low_rank_dimension": self.low_rank_dimension}

    @classmethod
    def example_kwargs(cls, embed_dim: int) -> dict[str, Any]:
        return {"low_rank_dimension": min(8, embed_dim)}

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return cls.example_kwargs(embed_dim)  # with the source equal to the base

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        self._check(base, source)
        sel = None
        if subspaces is not None:
            sel = _rotated_selection(self, subspaces, base, self.low_rank_dimension)
        return _rotated_interchange(self, base, source, sel)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, low_rank_dimension={self.low_rank_dimension}"


@register_intervention("boundless_rotated_space")
class BoundlessRotatedSpaceIntervention(TrainableIntervention):
    """Boundless DAS: a learned rotation plus a learned soft boundary on how many rotated dims
    are interchanged.

    Rotated dim ``i`` is taken from the source with weight
    ``sigmoid(c / T) * sigmoid((boundary * embed_dim - c) / T)`` at its centre ``c = i + 0.5``,
    a soft window over ``[0, boundary * embed_dim)``, where ``boundary`` is the parameter
    ``intervention_boundaries`` clamped to ``[0, 1]`` (starts at ``init_boundary``) and ``T`` the
    temperature. This is pyvene's two-sided boundary (so an untrained intervention at ``T = 50``
    weighs every dim about 0.26, as pyvene's does), measured at the dims' centres: at a low
    temperature the first ``round(boundary * embed_dim)`` rotated dims are swapped whole, dim 0
    included (pyvene's edge sits on dim 0 itself and keeps it at half weight).

    The schedule users run: start hot and anneal, e.g. for ``total`` optimiser steps::

        temps = torch.linspace(50.0, 0.1, total)
        for step in range(total):
            iv.set_temperature(temps[step])
            ...  # forward, loss (+ optionally a penalty on the boundary), backward, step

    Give the boundary its own, larger learning rate (pyvene's recipes use 1e-2 for it and 1e-3
    for the rotation). ``temperature`` is a buffer, so it is saved with the state dict. No
    subspaces: the boundary *is* the learned subspace. Parameters: ``embed_dim**2 + 1``.
    """

    supports_subspaces = False

    def __init__(self, embed_dim: int | None = None, init_boundary: float = 0.5, temperature: float = 50.0):
        name = type(self).__name__
        n = _need_width(embed_dim, name)
        super().__init__(n, None)
        if isinstance(init_boundary, bool) or not isinstance(init_boundary, (int, float)) or not (
                0.0 <= init_boundary <= 1.0):
            raise ConfigError(f"{name}: init_boundary must be a fraction in [0, 1], got {init_boundary!r}")
        with allocating(type(self).__name__, n):
            self.rotate_layer = orthonormal_layer(n)
        self.intervention_boundaries = nn.Parameter(torch.tensor([float(init_boundary)]))
        self.register_buffer("temperature", torch.tensor(_temperature_value(temperature, name)))

    def get_config(self) -> dict[str, Any]:
        # init_boundary and temperature start the parameter and the buffer: state, not settings.
        return {"embed_dim": self.embed_dim}

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {}  # with the source equal to the base

    def get_boundary_parameters(self) -> nn.Parameter:
        return self.intervention_boundaries

    def boundary_mask(self) -> torch.Tensor:
        """The soft ``[embed_dim]`` interchange weight of each rotated dim (float32)."""
        edge = self.intervention_boundaries.clamp(0.0, 1.0) * self.embed_dim
        centres = torch.arange(self.embed_dim, dtype=torch.float32, device=edge.device) + 0.5
        return torch.sigmoid(centres / self.temperature) * torch.sigmoid((edge - centres) / self.temperature)

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        self._no_subspaces(subspaces)
        self._check(base, source)
        with _full_precision(base):
            soft = self.boundary_mask()
        return _rotated_interchange(self, base, source, soft=soft)
