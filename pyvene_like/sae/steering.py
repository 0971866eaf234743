"""Steering toward a target with an SAE, and the uncertainty figure that goes with it.

The method follows "Enabling Layer-Level Steering in Large Language Models using Sparse
Autoencoders" (IBM, ``IBM/sae-steering``):

1. **Prompt summaries.** Each prompt's token activations at the site are encoded by the SAE;
   a prompt becomes one vector over the features: the sum (``"avg"``), the maximum
   (``"max"``) or the firing count (``"counts"``) of each feature over the prompt's tokens,
   divided by its total over all features (so each prompt weighs the same whatever its length).
2. **Scores** compare the alignment set (the target) with the reference set:

   * ``method="difference"`` (the default, needs nothing but the two prompt sets): the mean
     summary over the alignment prompts minus the mean over the reference prompts. Positive:
     the feature carries more of the alignment prompts' activation mass.
   * ``method="distance"`` (the published score): each reference prompt ``i`` has a distance
     ``d_i`` to the alignment set (the paper: the smallest Euclidean distance between its
     sentence embedding and the alignment prompts' embeddings; see :func:`min_distances`).
     A feature's raw score is the activation-weighted mean of ``d_i**2`` over the reference
     prompts, ``s_f = sum_i d_i**2 r_if / sum_i r_if``, then ``1 - (s_f - min) / (max - min)``,
     so features that fire on reference prompts close to the target score near 1. Features
     that never fire on the reference prompts score 0.

3. **Coverage**, the uncertainty figure: the fraction of SAE features that fire at least once
   on the reference prompts. A low coverage says the SAE represents little of the text the
   scores were read from, so few features can be steered. With it, the **reconstruction
   error** of the SAE on the alignment (target) prompts' tokens, as the fraction of variance
   unexplained ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``: how much of the target's
   activations the SAE can express at all.
4. **Steering** with the top-k features:

   * ``"swap"`` (the published method, :class:`~pyvene_like.sae.interventions.SAESwapIntervention`,
     registered as ``sae_swap``): at each position the SAE's
     pre-activations are weighted by the scores (the paper: the scores in [0, 1] as continuous
     weights, ``top_k=None``; or 1 for the top-k features, 0 for the others),
     the SAE's own activation (ReLU, TopK, JumpReLU) picks which features fire, and those
     features keep their *unweighted* pre-activation; every other feature is zeroed. As in the
     paper, the SAE's reconstruction then replaces the activations (``use_error_term=False``).
   * ``"add"``: ``sae_steer`` in mode ``"add"`` adds ``scale`` times each kept feature's mean
     activation per alignment-set token (the error term keeps the rest of the activation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..analysis.collect import ActivationSite
from ..analysis.collect import collect_activations as analysis_collect
from ..config import RepresentationConfig
from ..errors import ConfigError, ShapeError, accepted, did_you_mean
from ..validation import check_bool, check_fits_dtype, check_floating_tensor, check_number, is_int
from .interventions import (
    SAESwapIntervention as SAESwapIntervention,  # steering's intervention, also here
)
from .sae import SAE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SUMMARIES = ("avg", "max", "counts")
SCORE_METHODS = ("difference", "distance")
STEER_METHODS = ("swap", "add")


# -- collecting activations --------------------------------------------------------------------
def prompt_activations(model: nn.Module, prompts: Sequence[str] | Sequence[Sequence[int]], layer: int,
                       component: str = "block_output", *, tokenizer: PreTrainedTokenizerBase | None = None,
                        batch_size: int = 16, skip_first: int = 0, max_length: int | None = None
                        ) -> list[torch.Tensor]:
    """Activations at ``(layer, component)`` for each prompt: a list of ``[n_tokens_i, width]``.

    A shorthand for the one collector, :func:`pyvene_like.analysis.collect_activations`, with
    ``positions="all"`` at one site (the shape SAE summaries and training take): ``prompts`` are strings (give ``tokenizer``) or lists of token ids,
    run in right-padded batches; only real tokens are kept, so padding never enters a summary.
    ``skip_first`` drops each prompt's first tokens (the paper drops BOS). ``model`` may be an
    :class:`~pyvene_like.IntervenableModel` or a plain model.
    """
    site = ActivationSite(layer, component)
    acts = analysis_collect(model, prompts, site, positions="all", tokenizer=tokenizer, batch_size=batch_size,
                            skip_first=skip_first, max_length=max_length)
    return acts[site.column()]


# -- summaries, scores, coverage, reconstruction error -------------------------------------------
def _check_acts(name: str, acts, sae: SAE) -> list[torch.Tensor]:
    if isinstance(acts, torch.Tensor):
        acts = [acts] if acts.dim() == 2 else list(acts)
    if not isinstance(acts, (list, tuple)) or len(acts) == 0:
        raise ConfigError(f"{name}: the prompt set is empty; give at least one prompt's activations")
    out = []
    for i, a in enumerate(acts):
        if not isinstance(a, torch.Tensor) or a.dim() != 2 or a.shape[0] == 0:
            shape = list(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ShapeError(f"{name}: prompt {i} must be a [n_tokens >= 1, d_in] tensor, got {shape}")
        if a.shape[-1] != sae.d_in:
            raise ShapeError(
                f"{name}: prompt {i} has activations of width {a.shape[-1]} but the SAE has d_in={sae.d_in}; "
                f"collect them at the site the SAE was trained on"
            )
        out.append(check_floating_tensor(a, f"{name}: prompt {i}", error=ShapeError))
    return out


def _encode(sae: SAE, a: torch.Tensor) -> torch.Tensor:
    p = next(sae.parameters())
    with torch.no_grad():
        return sae.encode(a.to(p.device, p.dtype)).float().cpu()


def prompt_summaries(sae: SAE, acts: torch.Tensor | Sequence[torch.Tensor], summary: str = "avg") -> torch.Tensor:
    """``[n_prompts, d_sae]``: each prompt's features summed (``"avg"``), maxed (``"max"``) or
    counted (``"counts"``) over its tokens, divided by the total over features (a prompt on which
    no feature fires gives zeros)."""
    if summary not in SUMMARIES:
        raise ConfigError(f"summary {summary!r} is not supported; accepted: {accepted(SUMMARIES)}."
                          f"{did_you_mean(str(summary), SUMMARIES)}")
    acts = _check_acts("prompt_summaries", acts, sae)
    rows = []
    for a in acts:
        f = _encode(sae, a)
        if summary == "avg":
            v = f.sum(0)
        elif summary == "max":
            v = f.max(0).values.clamp_min(0)
        else:
            v = (f > 0).sum(0).float()
        total = v.sum()
        rows.append(v / total if total > 0 else v)
    return torch.stack(rows)


def min_distances(ref_embeddings: torch.Tensor, align_embeddings: torch.Tensor) -> torch.Tensor:
    """For each reference prompt, the smallest Euclidean distance from its embedding to the
    alignment prompts' embeddings (the paper uses normalised sentence embeddings)."""
    ref = check_floating_tensor(ref_embeddings, "min_distances: ref_embeddings", error=ShapeError).float()
    align = check_floating_tensor(align_embeddings, "min_distances: align_embeddings", error=ShapeError).float()
    if ref.dim() != 2 or align.dim() != 2 or ref.shape[1] != align.shape[1] or not len(ref) or not len(align):
        raise ShapeError(
            f"min_distances: embeddings must be [n_ref, d] and [n_align, d] with the same d, got "
            f"{list(ref.shape)} and {list(align.shape)}"
        )
    return torch.cdist(ref, align).min(dim=1).values


@dataclass
class FeatureScores:
    """What :func:`score_features` measured. ``scores [d_sae]`` (higher: more the target's),
    ``coverage`` (fraction of features firing at least once on the reference prompts),
    ``reconstruction_error`` (fraction of variance of the target tokens' activations that the
    SAE does not reconstruct), ``target_means [d_sae]`` (mean activation per alignment token)."""

    scores: torch.Tensor
    coverage: float
    reconstruction_error: float
    target_means: torch.Tensor
    sae: SAE = field(repr=False)
    method: str = "difference"
    summary: str = "avg"

    def top_features(self, top_k: int) -> list[int]:
        """The ``top_k`` best-scoring feature ids, best first."""
        d_sae = self.scores.numel()
        if not is_int(top_k) or not 1 <= top_k <= d_sae:
            raise ConfigError(f"top_k must be an int in 1..d_sae={d_sae}, got {top_k!r}")
        return self.scores.topk(top_k).indices.tolist()

    def swap_weights(self, power: float = 1.0) -> list[float]:
        """The paper's continuous swap weights: the scores mapped to [0, 1] (``(s - min) / (max -
        min)`` over all features; distance scores already are) and raised to ``power``. Power 1
        is the published weighting; a larger power lets fewer features through (a stronger
        steer), 0 weights every feature 1 (no steering)."""
        power = check_number(power, "swap_weights: power", non_negative=True)
        s = self.scores.float()
        span = s.max() - s.min()
        w = (s - s.min()) / span if span > 0 else torch.ones_like(s)
        return w.pow(power).tolist()

    def intervention_kwargs(self, method: str = "swap", top_k: int | None = 10, scale: float = 1.0,
                            use_error_term: bool | None = None, power: float | None = None) -> tuple[str, dict]:
        """``(intervention_type, intervention_kwargs)`` that steer with the ``top_k`` features;
        for ``"swap"``, ``top_k=None`` weights every feature by :meth:`swap_weights` (``power``,
        default 1: the paper's continuous weights) instead of keeping the top ``k``."""
        if method not in STEER_METHODS:
            raise ConfigError(f"steering method {method!r} is not supported; accepted: {accepted(STEER_METHODS)}."
                              f"{did_you_mean(str(method), STEER_METHODS)}")
        if use_error_term is not None:
            check_bool(use_error_term, "use_error_term")
        scale = check_fits_dtype(check_number(scale, "scale"), "scale", headroom=1e4)
        if power is not None and not (method == "swap" and top_k is None):
            raise ConfigError(f"power={power!r} is only used by method='swap' with top_k=None (continuous "
                              f"weights); got method={method!r}, top_k={top_k!r}")
        if method == "swap":
            error_term = False if use_error_term is None else use_error_term
            if top_k is None:
                return "sae_swap", {"sae": self.sae, "weights": self.swap_weights(1.0 if power is None else power),
                                    "use_error_term": error_term}
            return "sae_swap", {"sae": self.sae, "features": self.top_features(top_k), "use_error_term": error_term}
        if top_k is None:
            raise ConfigError("method='add' needs top_k, the number of best-scoring features to add to (an int "
                              "in 1..d_sae); top_k=None is for method='swap'")
        feats = self.top_features(top_k)
        values = [float(scale * self.target_means[f]) for f in feats]
        return "sae_steer", {"sae": self.sae, "features": feats, "mode": "add", "value": values,
                             "use_error_term": True if use_error_term is None else use_error_term}

    def steering_config(self, layer: int, component: str = "block_output", method: str = "swap",
                        top_k: int | None = 10, scale: float = 1.0, use_error_term: bool | None = None,
                        power: float | None = None) -> RepresentationConfig:
        """A :class:`~pyvene_like.RepresentationConfig` steering at ``(layer, component)``
        (arguments as in :meth:`intervention_kwargs`); use it in an
        :class:`~pyvene_like.IntervenableModel` with ``unit_locations={"base": None}`` in
        ``forward``, or ``timesteps="all"`` in ``generate``."""
        kind, kwargs = self.intervention_kwargs(method, top_k, scale, use_error_term, power)
        return RepresentationConfig(layer, component, intervention_type=kind, intervention_kwargs=kwargs)

    def to_dict(self, top_k: int | None = None) -> dict:
        out = {"coverage": self.coverage, "reconstruction_error": self.reconstruction_error,
               "method": self.method, "summary": self.summary}
        if top_k is not None:
            feats = self.top_features(top_k)
            out["features"] = feats
            out["scores"] = [float(self.scores[f]) for f in feats]
        return out


def coverage(sae: SAE, acts: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """Fraction of the SAE's features that fire (> 0) on at least one token of ``acts``."""
    acts = _check_acts("coverage", acts, sae)
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for a in acts:
        fired |= (_encode(sae, a) > 0).any(0)
    return float(fired.float().mean())


def reconstruction_error(sae: SAE, acts: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """Fraction of variance unexplained by the SAE over all tokens of ``acts``:
    ``sum ||x - sae(x)||^2 / sum ||x - mean(x)||^2`` (0: perfect; 1: as good as the mean)."""
    acts = _check_acts("reconstruction_error", acts, sae)
    x = torch.cat(acts).float()
    p = next(sae.parameters())
    with torch.no_grad():
        x_hat = sae(x.to(p.device, p.dtype)).float().cpu()
    total = (x - x.mean(0)).pow(2).sum()
    return float((x - x_hat).pow(2).sum() / total) if total > 0 else float("nan")


def score_features(sae: SAE, align_acts: torch.Tensor | Sequence[torch.Tensor],
                   ref_acts: torch.Tensor | Sequence[torch.Tensor], *, method: str = "difference",
                   summary: str = "avg", ref_distances: Sequence[float] | torch.Tensor | None = None
                   ) -> FeatureScores:
    """Score every feature by how it fires on the alignment prompts (the target) compared with
    the reference prompts; see the module docstring for the two methods. ``align_acts`` and
    ``ref_acts`` are lists of ``[n_tokens, d_in]`` activations, one per prompt (from
    :func:`prompt_activations`)."""
    if not isinstance(sae, SAE):
        raise ConfigError(f"score_features: sae must be a pyvene_like.sae.SAE, got {type(sae).__name__}")
    if method not in SCORE_METHODS:
        raise ConfigError(f"score_features: method {method!r} is not supported; accepted: "
                          f"{accepted(SCORE_METHODS)}.{did_you_mean(str(method), SCORE_METHODS)}")
    align = _check_acts("score_features (alignment set)", align_acts, sae)
    ref = _check_acts("score_features (reference set)", ref_acts, sae)
    ref_sum = prompt_summaries(sae, ref, summary)
    if method == "difference":
        if ref_distances is not None:
            raise ConfigError("score_features: ref_distances is only used by method='distance'")
        scores = prompt_summaries(sae, align, summary).mean(0) - ref_sum.mean(0)
    else:
        if ref_distances is None:
            raise ConfigError("score_features: method='distance' needs ref_distances, one per reference "
                              "prompt (e.g. min_distances(ref_embeddings, align_embeddings))")
        d = check_floating_tensor(ref_distances, "score_features: ref_distances").float()
        if d.dim() != 1 or d.numel() != len(ref):
            got = f"{d.numel()} entries" if d.dim() == 1 else f"shape {list(d.shape)}"
            raise ShapeError(f"score_features: ref_distances has {got} for {len(ref)} reference prompts; "
                             f"give one distance per prompt")
        if bool((d < 0).any()):
            raise ConfigError(f"score_features: ref_distances must be >= 0 (distances), got {d.min().item():g}")
        weight = ref_sum.sum(0)
        raw = (d.pow(2)[:, None] * ref_sum).sum(0) / weight
        fired = weight > 0
        scores = torch.zeros(sae.d_sae)
        if fired.any():
            lo, hi = raw[fired].min(), raw[fired].max()
            span = hi - lo
            scores[fired] = 1 - (raw[fired] - lo) / span if span > 0 else 1.0
    feats = torch.cat([_encode(sae, a) for a in align])
    return FeatureScores(scores=scores, coverage=coverage(sae, ref), reconstruction_error=reconstruction_error(sae, align),
                         target_means=feats.mean(0), sae=sae, method=method, summary=summary)


