"""Static interventions: interchange, arithmetic, zero, collect, skip, noise, lambda."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError, ShapeError
from ..registry import register_intervention
from ..types import Partition, Subspaces
from ..validation import check_bool, check_fits_dtype, check_non_negative_int, check_number
from .base import ConstantSourceIntervention, Intervention


def _like(source, base):
    return source if source.dtype == base.dtype else source.to(base.dtype)


def _selected(iv, base, source, subspaces):
    """The source, cast to the base's dtype and zero outside the chosen subspaces (zeroed, not
    multiplied by the mask: NaN * 0 is NaN, and a NaN or inf outside the subspaces must not
    reach the dims they leave alone)."""
    mask = iv.swap_mask(subspaces, base)
    source = _like(source, base)
    return source if mask is None else torch.where(mask, source, torch.zeros((), dtype=source.dtype, device=source.device))


def _blend(base, new, mask):
    """``new`` on the masked dims, ``base`` elsewhere (all dims when mask is None)."""
    if mask is None:
        return new
    return torch.where(mask, new, base)


@register_intervention("vanilla", "interchange")
class VanillaIntervention(Intervention):
    """Interchange: the base units take the source's values (on the chosen subspaces)."""

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {}  # with the source equal to the base

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        return _blend(base, _like(source, base), self.swap_mask(subspaces, base))


@register_intervention("addition")
class AdditionIntervention(Intervention):
    """``base + source`` (on the chosen subspaces). Steering vectors use this."""

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {"source_representation": torch.zeros(embed_dim)}

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        return base + _selected(self, base, source, subspaces)


@register_intervention("subtraction")
class SubtractionIntervention(Intervention):
    """``base - source`` (on the chosen subspaces)."""

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {"source_representation": torch.zeros(embed_dim)}

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        return base - _selected(self, base, source, subspaces)


@register_intervention("zero")
class ZeroIntervention(ConstantSourceIntervention):
    """Zero ablation of the chosen units (and subspaces)."""

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        mask = self.swap_mask(subspaces, base)  # embed_dim narrower than the units: its prefix only
        if mask is None:
            return torch.zeros_like(base)
        return base.masked_fill(mask, 0)


@register_intervention("collect")
class CollectIntervention(ConstantSourceIntervention):
    """Reads the units and leaves the output untouched; the values are returned by the call.

    With ``subspaces`` it returns only the selected dims, in the order the ids name them
    (``[..., k]``; every example must select as many dims)."""

    modifies_output = False

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {}  # it only reads

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        if subspaces is None:
            n = self.prefix_width(base)
            return base if n is None else base[..., :n]
        # The selected dims, in the order the ids name them (as pyvene returns them).
        dims, cover = self.subspace_dims(subspaces, base)
        index = dims.view(*cover, dims.shape[-1]).expand(*base.shape[:-1], dims.shape[-1])
        return torch.gather(base, -1, index)


@register_intervention("skip")
class SkipIntervention(Intervention):
    """Skip the hooked module at the chosen units: its output there becomes its input.

    Meant for output sites whose module keeps the width (a block, a residual sub-layer).
    """

    source_from = "module_input"

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        return _blend(base, _like(source, base), self.swap_mask(subspaces, base))


# noise_level times a standard normal draw must stay finite: |N(0, 1)| > 16 has probability ~1e-57.
_NOISE_HEADROOM = 16.0


@register_intervention("noise")
class NoiseIntervention(ConstantSourceIntervention):
    """Adds Gaussian noise ``noise_level * N(0, 1)``; with ``seed`` every call draws the same noise."""

    def __init__(self, embed_dim: int | None = None, subspace_partition: Partition = None, noise_level: float = 0.1, seed: int | None = None):
        super().__init__(embed_dim, subspace_partition)
        self.noise_level = check_fits_dtype(
            check_number(noise_level, "NoiseIntervention: noise_level", non_negative=True),
            "NoiseIntervention: noise_level", "float32", headroom=_NOISE_HEADROOM)
        if seed is not None:
            seed = check_non_negative_int(seed, "NoiseIntervention: seed (an int or None)")
        self.seed = seed

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "noise_level": self.noise_level, "seed": self.seed}

    @classmethod
    def example_kwargs(cls, embed_dim: int) -> dict[str, Any]:
        return {"intervention_kwargs": {"noise_level": 0.5, "seed": 7}}

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {"intervention_kwargs": {"noise_level": 0.0, "seed": 7}}

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor:
        if self.noise_level * _NOISE_HEADROOM > torch.finfo(base.dtype).max:
            # Fits float32 (checked when built) but not these activations (float16: 65504).
            raise ConfigError(
                f"NoiseIntervention: noise_level={self.noise_level!r} overflows {base.dtype} activations "
                f"(noise_level <= {torch.finfo(base.dtype).max / _NOISE_HEADROOM:.4g} for them)"
            )
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=base.device).manual_seed(self.seed)
        noise = torch.randn(base.shape, generator=gen, device=base.device, dtype=base.dtype)
        noise = noise * self.noise_level
        mask = self.swap_mask(subspaces, base)
        if mask is not None:
            noise = noise.masked_fill(~mask, 0)
        return base + noise

    def extra_repr(self) -> str:
        return f"noise_level={self.noise_level}, seed={self.seed}"


@register_intervention("lambda")
class LambdaIntervention(Intervention):
    """Wraps a user function ``fn(base, source)`` or ``fn(base, source, subspaces)``.

    Set ``needs_source=False`` for functions of the base alone (no source run is made).
    """

    def __init__(self, fn: Callable[..., torch.Tensor | None] | None = None, embed_dim: int | None = None, subspace_partition: Partition = None, needs_source: bool = True):
        super().__init__(embed_dim, subspace_partition)
        if fn is None or not callable(fn):
            raise ConfigError(f"LambdaIntervention needs a callable fn(base, source[, subspaces]), got {fn!r}")
        self.fn = fn
        self.source_from = "source" if check_bool(needs_source, "LambdaIntervention: needs_source") else None
        self._pass_subspaces = _arity(fn) == 3

    def get_config(self) -> dict[str, Any]:
        """The settings besides ``fn``: a function is code, not data, and is given back at load
        time (``from_pretrained(..., functions=...)``)."""
        return {**super().get_config(), "needs_source": self.source_from is not None}

    @classmethod
    def example_kwargs(cls, embed_dim: int) -> dict[str, Any]:
        return {"intervention_kwargs": {"fn": _example_mix}}

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {"intervention_kwargs": {"fn": _example_keep}}

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Subspaces = None) -> torch.Tensor | None:
        if self._pass_subspaces:
            new = self.fn(base, source, subspaces)
        else:
            new = self.fn(base, source)
        if new is None:  # the function only looked: the units stay as they are (pyvene's convention)
            return None
        if (not isinstance(new, torch.Tensor) or new.shape != base.shape or new.device != base.device
                or (base.dtype.is_floating_point and not new.dtype.is_floating_point)):
            got = (f"a {type(new).__name__}" if not isinstance(new, torch.Tensor) else
                   f"a tensor of shape {tuple(new.shape)}, dtype {new.dtype}, on {new.device}")
            raise ShapeError(
                f"LambdaIntervention: fn {_fn_name(self.fn)} returned {got}; accepted: None (no change) "
                f"or a floating-point tensor shaped like its base units {tuple(base.shape)} on "
                f"{base.device} (any float dtype; it is cast to {base.dtype}). Integer, bool and "
                f"complex results are not cast silently; lists and numpy arrays are not tensors"
            )
        return new

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__qualname__', self.fn)!r}"


def _fn_name(fn) -> str:
    return repr(getattr(fn, "__qualname__", fn))


def _arity(fn) -> int:
    """How LambdaIntervention calls ``fn``: 3 (base, source, subspaces) when it takes three
    positional arguments, else 2 (base, source); a ConfigError when it takes neither."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: called as fn(base, source)
        return 2
    for n in (3, 2):
        try:
            sig.bind(*range(n))
        except TypeError:
            continue
        return n
    raise ConfigError(
        f"LambdaIntervention: fn {_fn_name(fn)} has signature {sig}; accepted: a function of "
        f"(base, source) or (base, source, subspaces) (give source a default if you do not use it)"
    )


def _example_mix(base, source):
    """LambdaIntervention's declared example: a blend of base and source."""
    return 0.25 * base + 0.75 * source


def _example_keep(base, source):
    """LambdaIntervention's declared null edit."""
    return base
