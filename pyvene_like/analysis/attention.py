"""Attention patterns and finding the heads that move information between two positions.

``attention_patterns`` runs the model once with ``output_attentions=True``. Fused kernels
(``sdpa``, flash, flex) never materialise the weights, so for that one pass the model is
switched to its ``eager`` implementation and switched back afterwards, with a
:class:`~pyvene_like.PyveneLikeWarning` saying so (once per model by default: ``warn=``).
``head_scores`` reads, per example and head, the attention the query at one position gives a
key position; :class:`HeadScores` summarises it per head (share of examples at or above
``threshold``, mean, max). ``find_heads`` keeps the heads at or above ``threshold`` per
example and intersects (or unites) the per-example sets.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..engine.runner import call_model
from ..errors import ConfigError, LocationError, PyveneLikeWarning, ShapeError, accepted
from ..modes import hooks_restored
from ..validation import check_bool, check_number, is_int

_WARN = ("once", "always", "never")
_WARNED: weakref.WeakSet = weakref.WeakSet()  # models already told about the eager switch
_STACKS = {"encoder": "encoder_attentions", "decoder": "decoder_attentions", "cross": "cross_attentions"}


class AttentionHead(NamedTuple):
    """One attention head: ``(layer, head)``."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @staticmethod
    def intersection(head_sets: Iterable[Iterable[AttentionHead]]) -> list[AttentionHead]:
        """The heads present in every set, sorted (empty for no sets)."""
        sets = [set(s) for s in head_sets]
        return sorted(set.intersection(*sets)) if sets else []

    @staticmethod
    def union(head_sets: Iterable[Iterable[AttentionHead]]) -> list[AttentionHead]:
        return sorted(set().union(*[set(s) for s in head_sets]))


def _check_warn(warn: str, fn: str) -> None:
    if warn not in _WARN:
        raise ConfigError(f"{fn}: warn={warn!r}; accepted: {accepted(_WARN)}")


@contextmanager
def eager_attention(model: nn.Module, warn: str = "once") -> Iterator[str | None]:
    """Run the body with the model's eager attention; restore the implementation after.

    Yields the implementation that was replaced, or ``None`` when nothing changed. ``warn``:
    ``"once"`` (a :class:`~pyvene_like.PyveneLikeWarning` the first time a given model is
    switched), ``"always"`` or ``"never"``.
    """
    _check_warn(warn, "eager_attention")
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    if impl in (None, "eager"):
        yield None
        return
    if warn == "always" or (warn == "once" and model not in _WARNED):
        warnings.warn(
            f"attention_patterns: attn_implementation={impl!r} returns no attention weights; this "
            "pass runs with 'eager' attention (same maths, slower) and the model is switched back "
            f"to {impl!r} afterwards (said once per {type(model).__name__} instance; warn='always' "
            "or 'never' to change)",
            PyveneLikeWarning,
            stacklevel=4,
        )
        _WARNED.add(model)
    _set_impl(model, "eager")
    try:
        yield impl
    finally:
        _set_impl(model, impl)


def _set_impl(model, impl: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter(impl)
        except (ValueError, ImportError):
            pass
    if model.config._attn_implementation != impl:
        # Families that read the config at each forward but refuse the dynamic switch.
        model.config._attn_implementation = impl
    if model.config._attn_implementation != impl:
        raise ConfigError(
            f"attention_patterns: cannot switch {type(model).__name__} to attn_implementation={impl!r}; "
            "load it with attn_implementation='eager' to read attention weights"
        )


def _pick_stack(out, stack: str | None):
    is_seq2seq = getattr(out, "encoder_attentions", None) is not None or hasattr(out, "decoder_attentions")
    if is_seq2seq:
        if stack not in _STACKS:
            raise ConfigError(
                f"attention_patterns: stack={stack!r}; an encoder-decoder model has several attention "
                f"stacks, accepted: {accepted(_STACKS)}"
            )
        return getattr(out, _STACKS[stack], None)
    if stack not in (None, "encoder", "decoder"):
        raise ConfigError(f"attention_patterns: stack={stack!r} but the model has one stack; leave stack=None")
    return getattr(out, "attentions", None)


def attention_patterns(model: nn.Module, inputs: Mapping[str, torch.Tensor] | torch.Tensor, *, layers: Sequence[int] | None = None, stack: str | None = None,
                       warn: str = "once") -> torch.Tensor:
    """Attention weights ``[layers, batch, heads, query, key]`` of one forward pass.

    ``inputs`` is what the model takes (a tokenizer's output dict, or a tensor of ids).
    ``layers`` selects layers (default all); ``stack`` is needed for encoder-decoder models:
    ``"encoder"``, ``"decoder"`` or ``"cross"``. Rows are softmax distributions over keys
    (masked keys get 0). Sliding-window and global layers stack alike. ``warn`` is passed to
    :func:`eager_attention`.
    """
    _check_warn(warn, "attention_patterns")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"attention_patterns: model must be a torch.nn.Module, got {type(model).__name__}")
    if not (isinstance(inputs, Mapping) or (isinstance(inputs, torch.Tensor) and inputs.dim() >= 1 and not (
            inputs.dtype.is_floating_point or inputs.dtype.is_complex or inputs.dtype == torch.bool))):
        what = f"a {inputs.dtype} tensor of shape {list(inputs.shape)}" if isinstance(inputs, torch.Tensor) else repr(inputs)
        raise ShapeError(
            f"attention_patterns: inputs must be what the model takes: a dict of tensors (a tokenizer's "
            f"output) or a tensor of token ids [batch, seq], got {what}"
        )
    with torch.no_grad(), eager_attention(model, warn), hooks_restored(model):
        if isinstance(inputs, Mapping):
            out = model(**inputs, output_attentions=True, return_dict=True)
        else:
            out = call_model(model, {"input_ids": inputs, "output_attentions": True, "return_dict": True})
    attns = _pick_stack(out, stack)
    if not attns or any(a is None for a in attns):
        raise ConfigError(
            f"attention_patterns: {type(model).__name__} returned no attention weights with "
            "output_attentions=True"
        )
    n = len(attns)
    if layers is None:
        layers = range(n)
    layers = list(layers)
    bad = [x for x in layers if not is_int(x) or not -n <= x < n]
    if bad:
        raise LocationError(f"attention_patterns: layers {bad} out of range; the model has {n} layers (0 .. {n - 1})")
    return torch.stack([attns[x] for x in layers]).float()


def _layer_ids(model, layers, stack):
    if layers is None:
        return None
    n = _count_layers(model, stack)
    return [x % n for x in layers] if n else list(layers)


def _count_layers(model, stack) -> int | None:
    cfg = getattr(model, "config", None)
    if stack == "decoder" or stack == "cross":
        keys = ("num_decoder_layers", "decoder_layers", "num_hidden_layers", "num_layers", "n_layer")
    else:
        keys = ("num_hidden_layers", "num_layers", "n_layer", "encoder_layers")
    for key in keys:
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return None


def _per_example(value, b: int, label: str) -> torch.Tensor:
    # as_tensor(dtype=long) truncated 1.5 to 1, and True was read as position 1
    if is_int(value):
        if not -(2**63) <= value < 2**63:
            raise LocationError(f"find_heads: {label} {value} is out of range")
        return torch.full((b,), int(value), dtype=torch.long)
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise ConfigError(f"find_heads: {label} must hold integer positions, got a {value.dtype} tensor")
    elif not (isinstance(value, (list, tuple)) and all(is_int(v) and -(2**63) <= v < 2**63 for v in value)):
        raise ConfigError(
            f"find_heads: {label} must be an int or one int per example (a list or an integer tensor), "
            f"got {value!r}"
        )
    t = torch.as_tensor(value, dtype=torch.long).reshape(-1)
    if t.numel() != b:
        raise ShapeError(f"find_heads: {label} has {t.numel()} entries for a batch of {b}; give an int or one per example")
    return t


@dataclass
class HeadScores:
    """Attention from a query position to a key position, per example and head.

    ``weights`` is ``[examples, layers, heads]``; ``layers`` names its layers. ``share``,
    ``mean`` and ``max`` are ``[layers, heads]`` over the examples; ``share`` counts the
    examples at or above ``threshold``.
    """

    weights: torch.Tensor
    threshold: float
    layers: list[int]

    @property
    def share(self) -> torch.Tensor:
        return (self.weights >= self.threshold).float().mean(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.weights.mean(0)

    @property
    def max(self) -> torch.Tensor:
        return self.weights.max(0).values

    def _head(self, li: int, h: int) -> AttentionHead:
        return AttentionHead(self.layers[li], h)

    def ranked(self, min_share: float = 0.0) -> list[tuple[AttentionHead, float, float]]:
        """``(head, share, mean)`` of the heads with ``share >= min_share`` (and above 0),
        best first: by share, then mean attention."""
        share, mean = self.share, self.mean
        rows = [(self._head(li, h), share[li, h].item(), mean[li, h].item())
                for li, h in (share >= max(min_share, 1e-12)).nonzero().tolist()]
        return sorted(rows, key=lambda r: (-r[1], -r[2], r[0]))

    def heads(self, min_share: float = 1.0) -> list[AttentionHead]:
        """The heads at or above ``threshold`` in at least ``min_share`` of the examples, best first."""
        if not 0.0 < min_share <= 1.0:
            raise ConfigError(f"HeadScores.heads: min_share={min_share}; accepted: a fraction in (0, 1]")
        return [h for h, _, _ in self.ranked(min_share)]

    def below(self, value: float) -> list[AttentionHead]:
        """The heads that give the key less than ``value`` in every example (controls), sorted."""
        return sorted(self._head(li, h) for li, h in (self.max < value).nonzero().tolist())

    def per_example(self) -> list[set[AttentionHead]]:
        out: list[set[AttentionHead]] = [set() for _ in range(self.weights.shape[0])]
        for e, li, h in (self.weights >= self.threshold).nonzero().tolist():
            out[e].add(self._head(li, h))
        return out


def _scores(patterns: torch.Tensor, query_positions, key_positions, threshold: float, ignore_first: bool,
            layers: Sequence[int] | None) -> HeadScores:
    if patterns.dim() != 5:
        raise ShapeError(f"find_heads: patterns must be [layers, batch, heads, query, key], got {tuple(patterns.shape)}")
    check_number(threshold, "find_heads: threshold")
    check_bool(ignore_first, "find_heads: ignore_first")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"find_heads: threshold={threshold}; accepted: a number in [0, 1]")
    n_layers, b, n_heads, q_len, k_len = patterns.shape
    layer_ids = list(range(n_layers)) if layers is None else list(layers)
    q = _per_example(query_positions, b, "query_positions")
    k = _per_example(key_positions, b, "key_positions")
    for name, t, n in (("query", q, q_len), ("key", k, k_len)):
        bad = ((t < -n) | (t >= n)).nonzero().flatten().tolist()
        if bad:
            raise LocationError(
                f"find_heads: {name} position {t[bad[0]].item()} of example {bad[0]} is out of range for "
                f"sequences of {n} tokens (accepted: {-n} .. {n - 1})"
            )
    q, k = q % q_len, k % k_len
    rows = patterns[:, torch.arange(b), :, q, :]  # [batch, layers, heads, key]: advanced indices go first
    if ignore_first:
        if (k == 0).any():
            raise LocationError("find_heads: ignore_first=True drops key 0, but a key position is 0")
        rows = rows[..., 1:] / rows[..., 1:].sum(-1, keepdim=True).clamp_min(1e-12)
        k = k - 1
    weight = rows.gather(-1, k.view(b, 1, 1, 1).expand(b, n_layers, n_heads, 1)).squeeze(-1)
    return HeadScores(weight, float(threshold), layer_ids)


def heads_above(patterns: torch.Tensor, query_positions: int | Sequence[int] | torch.Tensor,
                key_positions: int | Sequence[int] | torch.Tensor, threshold: float = 0.5, *,
                ignore_first: bool = False, layers: Sequence[int] | None = None) -> list[set[AttentionHead]]:
    """Per example, the heads whose query position gives the key position ``>= threshold``.

    ``patterns`` is ``[layers, batch, heads, query, key]`` (from :func:`attention_patterns`);
    positions are an int or one per example (negative from the end). ``ignore_first``
    renormalises each row without key 0 (the BOS/[CLS] token many heads park attention on).
    ``layers`` names the layers of ``patterns`` (default ``0..L-1``) in the returned heads.
    """
    return _scores(patterns, query_positions, key_positions, threshold, ignore_first, layers).per_example()


def head_scores(model: nn.Module, inputs: Mapping[str, torch.Tensor] | torch.Tensor,
                query_positions: int | Sequence[int] | torch.Tensor,
                key_positions: int | Sequence[int] | torch.Tensor, threshold: float = 0.5, *,
                ignore_first: bool = False, layers: Sequence[int] | None = None, stack: str | None = None,
                warn: str = "once") -> HeadScores:
    """:class:`HeadScores` of one forward pass over the batch ``inputs``.

    Arguments as :func:`find_heads`. ``scores.ranked()`` lists ``(head, share, mean)`` best
    first, ``scores.heads(min_share=0.9)`` the heads at or above ``threshold`` in 90 % of the
    examples, ``scores.below(0.05)`` the heads that never reach 0.05.
    """
    patterns = attention_patterns(model, inputs, layers=layers, stack=stack, warn=warn)
    b = patterns.shape[1]
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if mask is not None:
        q = _per_example(query_positions, b, "query_positions") % patterns.shape[3]
        pad = (mask[torch.arange(b), q.clamp(max=mask.shape[1] - 1)] == 0).nonzero().flatten().tolist()
        if pad:
            raise LocationError(f"find_heads: the query position of example {pad[0]} is a padding token")
    return _scores(patterns, query_positions, key_positions, threshold, ignore_first,
                   _layer_ids(model, layers, stack))


def find_heads(model: nn.Module, inputs: Mapping[str, torch.Tensor] | torch.Tensor,
               query_positions: int | Sequence[int] | torch.Tensor,
               key_positions: int | Sequence[int] | torch.Tensor, threshold: float = 0.5, *,
               ignore_first: bool = False, layers: Sequence[int] | None = None, stack: str | None = None,
               reduce: str | None = "all", warn: str = "once") -> list[AttentionHead] | list[set[AttentionHead]]:
    """Heads where the query at ``query_positions`` attends to ``key_positions``.

    One forward pass over the batch ``inputs`` (see :func:`attention_patterns`; positions
    index the padded batch). ``reduce="all"`` returns the sorted heads found in every
    example (the intersection), ``"any"`` those found in at least one, ``None`` one set per
    example. :func:`head_scores` gives the per-head share and mean behind these sets.
    """
    if reduce not in ("all", "any", None):
        raise ConfigError(f"find_heads: reduce={reduce!r}; accepted: 'all', 'any', None")
    per = head_scores(model, inputs, query_positions, key_positions, threshold, ignore_first=ignore_first,
                      layers=layers, stack=stack, warn=warn).per_example()
    if reduce == "all":
        return AttentionHead.intersection(per)
    if reduce == "any":
        return AttentionHead.union(per)
    return per


