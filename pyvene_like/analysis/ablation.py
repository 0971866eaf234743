"""Head ablation: run a model with chosen attention heads' outputs zeroed or set to their mean.

The causal check behind "these heads move X to Y": remove what the heads write, at the
positions that matter, and measure what is lost, against removing as many other heads.

* :func:`head_means` reads each head's mean output from an activation dataset written by
  :func:`~pyvene_like.analysis.collect_activations` (mean ablation keeps the activation
  where the model has seen it, zero ablation may not);
* :func:`ablate_heads` runs the model once with the heads replaced (``zero`` or ``mean``) at
  every position, at one position, or at one position per example, and returns its outputs.

Both build on head-unit interventions (``zero``; ``vanilla`` fed the means as
``source_representations``), so any model whose heads the library resolves works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import RepresentationConfig
from ..errors import ConfigError, ShapeError
from ..model import IntervenableModel
from ..validation import check_floating_tensor, check_token_ids, is_int
from .attention import AttentionHead

if TYPE_CHECKING:
    from datasets import Dataset

_KINDS = ("zero", "mean")
_COMPONENT = "head_attention_value_output"


def _heads(heads, fn: str) -> list[AttentionHead]:
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence) or not heads:
        raise ConfigError(f"{fn}: heads must be a non-empty list of AttentionHead or (layer, head) pairs, got {heads!r}")
    out = []
    for h in heads:
        if not (isinstance(h, Sequence) and len(h) == 2 and all(is_int(v) and v >= 0 for v in h)):
            raise ConfigError(f"{fn}: each head must be an AttentionHead or a (layer, head) pair of "
                              f"non-negative ints, got {h!r}")
        out.append(AttentionHead(int(h[0]), int(h[1])))
    if len(set(out)) != len(out):
        raise ConfigError(f"{fn}: heads repeat: {[str(h) for h in out]}")
    return out


def _column(h: AttentionHead, component: str) -> str:
    return f"L{h.layer}.{component}.H{h.head}"


def head_means(dataset: Dataset, heads: Sequence, component: str = _COMPONENT) -> dict[AttentionHead, torch.Tensor]:
    """``{head: mean output [head_dim]}`` over the rows of an activation dataset.

    ``dataset`` is written by :func:`~pyvene_like.analysis.collect_activations` with the
    heads' layers as sites (``(layer, component, heads)``); the columns read are
    ``"L{layer}.{component}.H{head}"``.
    """
    heads = _heads(heads, "head_means")
    if not isinstance(component, str) or not component:
        raise ConfigError(f"head_means: component must be a head component name (a str), got {component!r}")
    names = getattr(dataset, "column_names", None)
    if names is None:
        raise ConfigError(f"head_means: expected a datasets.Dataset from collect_activations, got {type(dataset).__name__}")
    missing = [_column(h, component) for h in heads if _column(h, component) not in names]
    if missing:
        raise ConfigError(f"head_means: the dataset has no column {missing[0]!r}; collect the head's layer with "
                          f"sites=[(layer, {component!r}, heads)] (it has {[c for c in names if '.H' in c][:6]}...)")
    if len(dataset) == 0:
        raise ConfigError("head_means: the dataset has no rows to average")
    cols = dataset.select_columns([_column(h, component) for h in heads]).with_format("torch")[:]
    out = {}
    for h in heads:
        col = cols[_column(h, component)]
        if not isinstance(col, torch.Tensor) or col.dim() != 2 or not col.dtype.is_floating_point:
            desc = f"{col.dtype} values of shape {list(col.shape)}" if isinstance(col, torch.Tensor) else \
                "rows of different widths or non-numbers"
            raise ConfigError(f"head_means: column {_column(h, component)!r} must hold one float vector [head_dim] per "
                              f"row, as collect_activations writes it; got {desc}")
        mean = col.float().mean(0)
        if not bool(torch.isfinite(mean).all()):
            raise ConfigError(f"head_means: column {_column(h, component)!r} holds NaN or infinite values; its mean "
                              f"is not a usable activation")
        out[h] = mean
    return out


def _positions(positions, bsz: int):
    """``None`` (every position), an int, or ``[[p] per example]``."""
    if positions is None:
        return None
    if is_int(positions):
        return int(positions)
    if isinstance(positions, torch.Tensor):
        positions = positions.tolist()
    if not isinstance(positions, Sequence) or isinstance(positions, (str, bytes)) or \
            not all(is_int(p) for p in positions):
        raise ConfigError(f"ablate_heads: positions must be None (every position), an int, or one int per example, "
                          f"got {positions!r}")
    if len(positions) != bsz:
        raise ShapeError(f"ablate_heads: positions has {len(positions)} entries for a batch of {bsz}; give one per example")
    return [[int(p)] for p in positions]


def _batch_shape(inputs: Mapping[str, Any]) -> tuple[int, int]:
    for v in inputs.values():
        if isinstance(v, torch.Tensor) and v.dim() >= 2:
            return v.shape[0], v.shape[1]
    raise ShapeError("ablate_heads: inputs hold no [batch, seq] tensor (pass the tokenizer's output as a dict)")


def ablate_heads(model: nn.Module, inputs: Mapping[str, torch.Tensor], heads: Sequence,
                 positions: int | Sequence[int] | torch.Tensor | None = None, *,
                 kind: str = "zero", means: Mapping | None = None, component: str = _COMPONENT) -> Any:
    """Run ``model`` on ``inputs`` with the outputs of ``heads`` ablated; returns the model's outputs.

    * ``heads``: ``AttentionHead``\\ s or ``(layer, head)`` pairs, over any layers;
    * ``positions``: ``None`` (every position), an int (the same position in every example,
      negative from the end), or one int per example (each example's own position);
    * ``kind``: ``"zero"`` sets the heads' outputs to zero; ``"mean"`` to ``means[head]``
      (a ``[head_dim]`` tensor, e.g. from :func:`head_means`);
    * ``component``: the head component to ablate (``head_attention_value_output``, the head's
      value mixture before the output projection, by default).
    """
    if kind not in _KINDS:
        raise ConfigError(f"ablate_heads: kind={kind!r}; accepted: {', '.join(map(repr, _KINDS))}")
    heads = _heads(heads, "ablate_heads")
    if kind == "zero" and means is not None:
        raise ConfigError("ablate_heads: means are read only by kind='mean'; drop means= or set kind='mean'")
    if kind == "mean":
        if not isinstance(means, Mapping):
            raise ConfigError(f"ablate_heads: kind='mean' needs means={{head: tensor [head_dim]}} (see head_means), "
                              f"got {type(means).__name__}")
        absent = [str(h) for h in heads if h not in means]
        if absent:
            raise ConfigError(f"ablate_heads: means has no entry for head(s) {absent}")
    if not isinstance(inputs, Mapping):
        raise ConfigError(f"ablate_heads: inputs must be a dict of tensors (the tokenizer's output), got "
                          f"{type(inputs).__name__}")
    if "input_ids" in inputs:
        check_token_ids(inputs["input_ids"], "ablate_heads: inputs['input_ids']",
                        vocab_size=getattr(getattr(model, "config", None), "vocab_size", None))
    elif "inputs_embeds" not in inputs:
        raise ConfigError(f"ablate_heads: inputs need 'input_ids' or 'inputs_embeds', got keys {sorted(inputs)}")
    bsz, seq = _batch_shape(inputs)
    pos = _positions(positions, bsz)
    by_layer: dict[int, list[int]] = {}
    for h in sorted(heads):
        by_layer.setdefault(h.layer, []).append(h.head)
    unit = "h" if pos is None else "h.pos"
    reps = [RepresentationConfig(layer, component, unit, intervention_type="zero" if kind == "zero" else "vanilla")
            for layer in by_layer]
    im = IntervenableModel(reps, model)
    locs = [[hs] * bsz if pos is None else ([hs] * bsz, pos) for hs in by_layer.values()]
    sources = None
    if kind == "mean":
        per_unit = 1 if pos is not None else seq  # head-major units: each head's mean once per position
        sources = []
        for layer, hs in by_layer.items():
            vals = [check_floating_tensor(means[AttentionHead(layer, h)], f"ablate_heads: means[{AttentionHead(layer, h)}]")
                    .float() for h in hs]
            if any(v.dim() != 1 or v.shape != vals[0].shape for v in vals):
                raise ShapeError(f"ablate_heads: means for layer {layer} must be [head_dim] tensors of one width, got "
                                 f"{[tuple(v.shape) for v in vals]}")
            sources.append(torch.stack(vals).repeat_interleave(per_unit, dim=0))
    _, out = im(dict(inputs), unit_locations={"base": locs}, source_representations=sources)
    return out
