"""SAE interventions: edit a site's activations in the feature space of a sparse autoencoder.

Each intervention encodes the gathered units ``x [batch, units, d_in]`` with its :class:`SAE`
into features ``f``, edits some features into ``f'``, and writes back

* with the error term (``use_error_term=True``, the default): ``x + (decode(f') - decode(f))``,
  which is SAELens's ``decode(f') + (x - decode(f))`` rearranged. An edit that changes no
  feature gives ``decode(f') - decode(f) == 0`` exactly, so the model's outputs are
  bit-identical to running without the SAE; the SAE only moves what its features move.
* without it: ``decode(f')``, the SAE's reconstruction replaces the activations (the model then
  also sees the SAE's reconstruction error).

Which features: ``features=[...]`` at construction, or ``subspaces`` per call (feature ids,
``[ids]`` or ``[batch][ids]``; with ``subspace_partition``, ids of feature ranges), else all.
Positions are the engine's ``unit_locations`` (``None``: every position), in ``forward`` and in
``generate``. The SAE is a submodule, so its weights are in the intervention's state dict and
``save_pretrained`` stores them with its settings (``sae_config``); its parameters are frozen.

Registered as ``sae_interchange``, ``sae_steer``, ``sae_ablate`` and ``sae_swap`` (the
steering method of :mod:`pyvene_like.sae.steering`, which scores the features it keeps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError, LocationError, ShapeError, accepted, did_you_mean
from ..interventions.base import Intervention, check_partition, subspace_rows
from ..registry import register_intervention
from ..validation import (
    check_bool,
    check_fits_dtype,
    check_number,
    check_optional_positive_int,
    is_int,
)
from .sae import SAE


class SAEIntervention(Intervention):
    """Base of the SAE interventions: encode, :meth:`edit` the features, decode (+ error term)."""

    supports_subspaces = True

    def __init__(self, sae: SAE | None = None, sae_config: dict | None = None, embed_dim: int | None = None,
                 subspace_partition: Sequence[Sequence[int]] | None = None,
                 features: int | Sequence[int] | torch.Tensor | None = None, use_error_term: bool = True):
        super().__init__(None, None)
        name = type(self).registry_name or type(self).__name__
        if sae is None:
            if sae_config is None:
                raise ConfigError(
                    f"{name}: give the SAE (sae=load_sae(...)) or its settings (sae_config=SAE.config())"
                )
            sae = SAE.from_config(sae_config)
        elif not isinstance(sae, SAE):
            raise ConfigError(
                f"{name}: sae must be a pyvene_like.sae.SAE (from load_sae or SAE(...)), got "
                f"{type(sae).__name__}"
            )
        elif sae_config is not None and sae_config != sae.config():
            raise ConfigError(f"{name}: sae_config {sae_config} does not match the given SAE's {sae.config()}")
        embed_dim = check_optional_positive_int(embed_dim, f"{name}: embed_dim")
        if embed_dim is not None and embed_dim != sae.d_in:
            hook = f" (trained on {sae.hook_name!r})" if sae.hook_name else ""
            raise ShapeError(
                f"{name}: the site's width is {embed_dim} but the SAE{hook} has d_in={sae.d_in}; "
                f"attach it to a site of width {sae.d_in} (embed_dim={embed_dim})"
            )
        check_bool(use_error_term, f"{name}: use_error_term")
        self.sae = sae.requires_grad_(False)
        self.embed_dim = embed_dim
        self.subspace_partition = check_partition(subspace_partition, sae.d_sae)
        self.features = self._check_features(features)
        self.use_error_term = use_error_term
        self._masks: dict = {}

    @property
    def sae_config(self) -> dict:
        return self.sae.config()

    def get_config(self) -> dict[str, Any]:
        """The SAE by its settings (``sae_config``; its weights are in the state dict)."""
        return {"sae_config": self.sae.config(), "embed_dim": self.embed_dim,
                "subspace_partition": self.subspace_partition, "features": self.features,
                "use_error_term": self.use_error_term}

    @classmethod
    def example_kwargs(cls, embed_dim: int) -> dict[str, Any]:
        return {"intervention_kwargs": {"sae_config": SAE(embed_dim, 2 * embed_dim, "topk", k=4).config()}}

    def _check_features(self, features):
        if features is None:
            return None
        if isinstance(features, int):
            features = [features]
        if isinstance(features, torch.Tensor):
            features = features.tolist()
        name = type(self).registry_name
        if not isinstance(features, (list, tuple)) or not features or not all(
            is_int(f) for f in features
        ):
            raise ConfigError(f"{name}: features must be a non-empty list of feature ids (ints), got {features!r}")
        bad = [f for f in features if not 0 <= f < self.sae.d_sae]
        if bad:
            raise ConfigError(
                f"{name}: feature {bad[0]} is outside the SAE's {self.sae.d_sae} features "
                f"(accepted: 0..{self.sae.d_sae - 1})"
            )
        return list(features)

    def _fits(self, value: float, field: str) -> float:
        """A number the features are set to or scaled by: finite in the SAE's dtype, where it
        is used (``1e308`` would be ``inf`` in float32)."""
        return check_fits_dtype(value, field, self.sae.W_enc.dtype)

    # -- which features ------------------------------------------------------------------------
    def feature_mask(self, subspaces: Sequence[Sequence[int]] | None, feats: torch.Tensor) -> torch.Tensor | None:
        """Boolean mask over features, broadcastable to ``feats [batch, units, d_sae]``; None: all."""
        d_sae, device = feats.shape[-1], feats.device
        if subspaces is None:
            if self.features is None:
                return None
            mask = self._masks.get(device)
            if mask is None:
                mask = torch.zeros(d_sae, dtype=torch.bool, device=device)
                mask[self.features] = True
                self._masks[device] = mask
            return mask
        if self.subspace_partition is None:
            rows = subspace_rows(subspaces, feats.shape[0], d_sae, lambda bad: (
                f"subspaces: feature {bad} is outside the SAE's {d_sae} features (accepted: "
                f"0..{d_sae - 1}, or set subspace_partition to address ranges of features)"))
            ids = torch.as_tensor(rows, dtype=torch.long, device=device)
            mask = torch.zeros(feats.shape[0], d_sae, dtype=torch.bool, device=device)
            mask.scatter_(1, ids, True)
        else:
            table = self._table(d_sae, device)
            rows = subspace_rows(subspaces, feats.shape[0], table.shape[0], lambda bad: (
                f"subspaces: subspace id {bad} is past subspace_partition "
                f"{self.subspace_partition} (accepted ids: 0..{table.shape[0] - 1})"))
            ids = torch.as_tensor(rows, dtype=torch.long, device=device)
            mask = table[ids].any(dim=1)
        return mask.unsqueeze(1)

    # -- the computation ------------------------------------------------------------------------
    def edit(self, feats: torch.Tensor, mask: torch.Tensor | None, source: torch.Tensor | None,
             subspaces: Sequence[Sequence[int]] | None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        sae = self.sae
        if base.shape[-1] != sae.d_in:
            raise ShapeError(
                f"{type(self).registry_name}: the units have width {base.shape[-1]} but the SAE has "
                f"d_in={sae.d_in}"
            )
        feats, stats = sae.encode_with_stats(base)
        edited = self.edit(feats, self.feature_mask(subspaces, feats), source, subspaces)
        recon = sae.decode(edited, stats)
        if self.use_error_term:
            return base + (recon - sae.decode(feats, stats)).to(base.dtype)
        return recon.to(base.dtype)

    def extra_repr(self) -> str:
        return f"features={self.features}, use_error_term={self.use_error_term}"


@register_intervention("sae_interchange")
class SAEInterchangeIntervention(SAEIntervention):
    """The chosen features (all by default) take the source's values: ``f' = where(mask, f_src, f)``.

    With the error term the base keeps its own reconstruction error, so swapping every feature
    gives ``decode(f_src) + (x - decode(f))``.
    """

    def edit(self, feats: torch.Tensor, mask: torch.Tensor | None, source: torch.Tensor | None,
             subspaces: Sequence[Sequence[int]] | None) -> torch.Tensor:
        if source is None:
            raise ShapeError("sae_interchange needs a source (sources= or source_representations=)")
        src = self.sae.encode(source)
        return src if mask is None else torch.where(mask, src, feats)

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return cls.example_kwargs(embed_dim)  # with the source equal to the base


_MODES = ("set", "add", "scale")


@register_intervention("sae_steer")
class SAESteerIntervention(SAEIntervention):
    """Set, add to or scale the chosen features: ``mode`` ``"set"`` (``f' = value``), ``"add"``
    (``f + value``) or ``"scale"`` (``f * value``). ``value`` is one number, or one per entry of
    ``features`` (then per-call ``subspaces`` are refused, since they would not line up)."""

    source_from = None

    def __init__(self, sae: SAE | None = None, sae_config: dict | None = None, embed_dim: int | None = None,
                 subspace_partition: Sequence[Sequence[int]] | None = None,
                 features: int | Sequence[int] | torch.Tensor | None = None, use_error_term: bool = True,
                 mode: str = "add", value: float | Sequence[float] | torch.Tensor = 1.0):
        super().__init__(sae, sae_config, embed_dim, subspace_partition, features, use_error_term)
        if mode not in _MODES:
            raise ConfigError(
                f"sae_steer: mode {mode!r} is not supported; accepted: {accepted(_MODES)}."
                f"{did_you_mean(str(mode), _MODES)}"
            )
        if isinstance(value, torch.Tensor):
            if not value.dtype.is_floating_point:
                raise ConfigError(
                    f"sae_steer: value is a {value.dtype} tensor; accepted: a number, a list of "
                    f"numbers or a floating-point tensor (cast it yourself, e.g. value.float())"
                )
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            if self.features is None or len(value) != len(self.features):
                n = "no features" if self.features is None else f"{len(self.features)} features"
                raise ConfigError(
                    f"sae_steer: value has {len(value)} entries but the intervention has {n}; give "
                    f"one number, or one per entry of features"
                )
            value = [self._fits(check_number(v, f"sae_steer: value[{i}]"), f"sae_steer: value[{i}]")
                     for i, v in enumerate(value)]
        else:
            value = self._fits(check_number(value, "sae_steer: value (a number or a list of numbers)"),
                               "sae_steer: value")
        self.mode = mode
        self.value = value
        self._values: dict = {}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode, "value": self.value}

    @classmethod
    def example_kwargs(cls, embed_dim: int) -> dict[str, Any]:
        return {"intervention_kwargs": {"sae_config": SAE(embed_dim, 2 * embed_dim, "jumprelu").config(),
                                        "features": [3, 4], "mode": "set", "value": [2.0, -1.0]}}

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        return {"intervention_kwargs": {"sae_config": SAE(embed_dim, 2 * embed_dim).config(),
                                        "mode": "add", "value": 0.0}}

    def _value(self, feats):
        if not isinstance(self.value, list):
            return self.value
        key = (feats.device, feats.dtype)
        vec = self._values.get(key)
        if vec is None:
            vec = torch.zeros(feats.shape[-1], dtype=feats.dtype, device=feats.device)
            vec[self.features] = torch.tensor(self.value, dtype=feats.dtype, device=feats.device)
            self._values[key] = vec
        return vec

    def edit(self, feats: torch.Tensor, mask: torch.Tensor | None, source: torch.Tensor | None,
             subspaces: Sequence[Sequence[int]] | None) -> torch.Tensor:
        if subspaces is not None and isinstance(self.value, list):
            raise LocationError(
                "sae_steer: per-call subspaces cannot be used with a per-feature value list (the "
                "values line up with features=); give one number as value, or leave subspaces out"
            )
        value = self._value(feats)
        if self.mode == "set":
            new = torch.broadcast_to(torch.as_tensor(value, dtype=feats.dtype, device=feats.device), feats.shape)
        elif self.mode == "add":
            new = feats + value
        else:
            new = feats * value
        return new if mask is None else torch.where(mask, new, feats)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}, value={self.value}"


@register_intervention("sae_ablate")
class SAEAblateIntervention(SAEIntervention):
    """Zero the chosen features (all by default): ``f' = where(mask, 0, f)``."""

    source_from = None

    @classmethod
    def example_kwargs(cls, embed_dim: int) -> dict[str, Any]:
        return {"intervention_kwargs": {"sae_config": SAE(embed_dim, 2 * embed_dim,
                                                          normalize_activations="layer_norm").config(),
                                        "use_error_term": False}}

    def edit(self, feats: torch.Tensor, mask: torch.Tensor | None, source: torch.Tensor | None,
             subspaces: Sequence[Sequence[int]] | None) -> torch.Tensor:
        if mask is None:
            return torch.zeros_like(feats)
        return feats.masked_fill(mask, 0)


# -- the swap intervention (steering) -------------------------------------------------------------
@register_intervention("sae_swap")
class SAESwapIntervention(SAEIntervention):
    """Keep only the chosen ``features`` (the published "swap"): weight the pre-activations by
    1 on the chosen features and 0 elsewhere, let the SAE's activation pick what fires, and keep
    those features' unweighted pre-activations; all other features are zeroed. ``weights``
    (one number per SAE feature, e.g. the paper's scores in [0, 1]) replaces the 0/1 weights.
    As in the paper, set ``use_error_term=False`` to let the reconstruction replace the
    activations; with the error term only the removed features' contributions are subtracted."""

    source_from = None
    supports_subspaces = False

    def __init__(self, sae: SAE | None = None, sae_config: dict | None = None, embed_dim: int | None = None,
                 subspace_partition: Sequence[Sequence[int]] | None = None,
                 features: int | Sequence[int] | torch.Tensor | None = None, use_error_term: bool = True,
                 weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__(sae, sae_config, embed_dim, subspace_partition, features, use_error_term)
        if isinstance(weights, torch.Tensor):
            if not weights.dtype.is_floating_point:
                raise ConfigError(
                    f"sae_swap: weights is a {weights.dtype} tensor; accepted: a list of numbers or a "
                    f"floating-point tensor"
                )
            weights = weights.tolist()
        if weights is None:
            if self.features is None:
                raise ConfigError("sae_swap: give the features to keep (features=[...]) or one weight per feature")
        else:
            if self.features is not None:
                raise ConfigError("sae_swap: give features= or weights=, not both")
            if not isinstance(weights, (list, tuple)) or len(weights) != self.sae.d_sae:
                raise ConfigError(f"sae_swap: weights must be {self.sae.d_sae} numbers (one per SAE feature)")
            weights = [self._fits(check_number(w, f"sae_swap: weights[{i}]"), f"sae_swap: weights[{i}]")
                       for i, w in enumerate(weights)]
        self.weights = weights
        self._weight_vecs: dict = {}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": self.weights}

    @classmethod
    def example_kwargs(cls, embed_dim: int) -> dict[str, Any]:
        return {"intervention_kwargs": {"sae_config": SAE(embed_dim, 2 * embed_dim, "topk", k=4).config(),
                                        "features": [2, 7, 9], "use_error_term": False}}

    @classmethod
    def null_kwargs(cls, embed_dim: int) -> dict[str, Any] | None:
        # every feature weighted 1: what fires is what the SAE picks itself, so nothing changes
        return {"intervention_kwargs": {"sae_config": SAE(embed_dim, 2 * embed_dim, "topk", k=4).config(),
                                        "weights": [1.0] * (2 * embed_dim)}}

    def _weight(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        w = self._weight_vecs.get(key)
        if w is None:
            if self.weights is not None:
                w = torch.tensor(self.weights, dtype=like.dtype, device=like.device)
            else:
                w = torch.zeros(self.sae.d_sae, dtype=like.dtype, device=like.device)
                w[self.features] = 1
            self._weight_vecs[key] = w
        return w

    def forward(self, base: torch.Tensor, source: torch.Tensor | None = None,
                subspaces: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        sae = self.sae
        if base.shape[-1] != sae.d_in:
            raise ShapeError(f"sae_swap: the units have width {base.shape[-1]} but the SAE has d_in={sae.d_in}")
        if subspaces is not None:
            raise LocationError("sae_swap: per-call subspaces are not supported; the kept features are features=")
        sae._check_input(base)
        x_n, stats = sae.normalize(base.to(sae.dtype))
        pre = sae.pre_activations(x_n)
        kept = sae.activate(pre * self._weight(pre)) != 0
        swapped = torch.where(kept, pre, torch.zeros_like(pre))
        recon = sae.decode(swapped, stats)
        if self.use_error_term:
            return base + (recon - sae.decode(sae.activate(pre), stats)).to(base.dtype)
        return recon.to(base.dtype)

    def extra_repr(self) -> str:
        w = "given" if self.weights is not None else None
        return f"features={self.features}, weights={w}, use_error_term={self.use_error_term}"
