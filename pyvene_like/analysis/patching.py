"""Patching sweeps (causal tracing) and attribution patching, with the heatmaps researchers read.

An *exact* sweep patches one site at a time (a layer and a position, a head, or a head at a
position) from one run into the other and records a metric of the outputs:

* ``direction="denoising"``: the base is the corrupted run, the source the clean run (ROME's
  causal tracing: which clean states restore the answer);
* ``direction="noising"``: the base is the clean run, the source the corrupted run (which
  states the answer needs).

Both are reported on the same scale, ``normalized``: 0 = the corrupted run's metric, 1 = the
clean run's. The corrupted run is either counterfactual inputs (``corrupted=``) or ROME's
Gaussian noise on the subject tokens' embeddings (``noise=GaussianNoise(...)``, seeded).

How a sweep runs: the source activations of every layer are read once (one pass, Collect
interventions); then each layer's sites are laid along the batch dimension, site-major
(row = site * batch + example), and patched with ``source_representations`` in one forward per
chunk of rows, as many rows as ``max_rows`` (or ``memory_budget``) allows.

*Attribution patching* estimates the same grid from one forward of the source run and one
forward + backward of the base run: ``effect(site) ~= metric(base) + (a_source - a_base) .
d metric / d a_base`` (gradients read through zero-valued ``addition`` interventions). It is a
first-order approximation; :func:`compare_attribution` says how well it ranks the sites.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import IntervenableConfig, RepresentationConfig
from ..errors import ConfigError, LocationError, ShapeError
from ..model import IntervenableModel
from ..types import Device, Inputs
from ..validation import (
    check_bool,
    check_fits_dtype,
    check_int,
    check_int_sequence,
    check_number,
    check_optional_positive_int,
    check_token_ids,
    is_int,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# A token id, or one per example.
Tokens = int | Sequence[int] | torch.Tensor

DIRECTIONS = ("denoising", "noising")
UNITS = ("pos", "h", "h.pos")
#: The files :meth:`PatchingResult.save` writes.
PATCHING_CONFIG = "patching.json"
PATCHING_WEIGHTS = "patching.safetensors"


# -- metrics ------------------------------------------------------------------------------------
def _logits(outputs) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if logits is None:
        if isinstance(outputs, torch.Tensor):
            return outputs
        raise ConfigError(
            "metric: the model's outputs have no .logits; pass your own metric, a function "
            "outputs -> [batch] tensor"
        )
    return logits


def _per_row(t, rows: int, device) -> torch.Tensor:
    """A per-example value ``[batch]`` (or one int) repeated for site-major rows ``[k * batch]``."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        return t.expand(rows)
    if rows % t.shape[0]:
        raise LocationError(f"metric: {t.shape[0]} per-example tokens do not divide {rows} rows")
    return t.repeat(rows // t.shape[0])


def _at(logits: torch.Tensor, position) -> torch.Tensor:
    """Logits at ``position`` (an int, or one position per example): ``[rows, vocab]``."""
    if logits.dim() == 2:
        return logits
    if isinstance(position, int):
        return logits[:, position]
    pos = _per_row(position, logits.shape[0], logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), pos]


def logit_diff(correct: Tokens, wrong: Tokens, position: Tokens = -1) -> Callable:
    """``logit[correct] - logit[wrong]`` at ``position`` (ints, or one per example)."""

    def metric(outputs):
        lg = _at(_logits(outputs), position).float()
        rows = torch.arange(lg.shape[0], device=lg.device)
        return lg[rows, _per_row(correct, lg.shape[0], lg.device)] - lg[rows, _per_row(wrong, lg.shape[0], lg.device)]

    return metric


def token_prob(token: Tokens, position: Tokens = -1) -> Callable:
    """The probability of ``token`` (an int, or one per example) at ``position``."""

    def metric(outputs):
        p = _at(_logits(outputs), position).float().softmax(-1)
        return p[torch.arange(p.shape[0], device=p.device), _per_row(token, p.shape[0], p.device)]

    return metric


def kl_to(reference_logits: torch.Tensor, position: Tokens = -1) -> Callable:
    """``KL(reference || outputs)`` of the next-token distributions at ``position``;
    ``reference_logits``: ``[batch, vocab]`` (e.g. the clean run's). Lower is closer."""

    def metric(outputs):
        lp = _at(_logits(outputs), position).float().log_softmax(-1)
        ref = reference_logits.to(lp.device).float().log_softmax(-1)
        ref = ref.repeat(lp.shape[0] // ref.shape[0], 1)
        return (ref.exp() * (ref - lp)).sum(-1)

    return metric


# -- corruption ---------------------------------------------------------------------------------
@dataclass
class GaussianNoise:
    """ROME's corruption: Gaussian noise added to the embeddings of ``positions`` (the subject
    tokens; one list for every example, or one list per example).

    ``std``: the noise's standard deviation; ``None`` is 3 x the standard deviation of the
    model's input embedding weights (ROME uses 3 x that of embeddings over a corpus).
    """

    positions: Sequence
    std: float | None = None
    seed: int = 0

    def check(self) -> None:
        """Refuse a bad ``std``, ``seed`` or ``positions`` (before the model is run)."""
        if self.std is not None:
            check_fits_dtype(check_number(self.std, "GaussianNoise.std", positive=True), "GaussianNoise.std",
                             headroom=10.0)
        check_int(self.seed, "GaussianNoise.seed", minimum=0)
        pos = self.positions
        if isinstance(pos, (list, tuple)) and pos and _flat(pos):
            check_int_sequence(pos, "GaussianNoise.positions", unique=True, error=LocationError)
        elif isinstance(pos, (list, tuple)) and pos and all(isinstance(r, (list, tuple)) for r in pos):
            for b, r in enumerate(pos):
                check_int_sequence(r, f"GaussianNoise.positions[{b}]", unique=True, error=LocationError)
        else:
            raise LocationError(f"GaussianNoise.positions must be a non-empty list of ints (the subject's "
                                f"positions) or one such list per example, got {pos!r}")

    def tensor(self, model: nn.Module, bsz: int, seq: int, width: int, device: Device,
               dtype: torch.dtype) -> torch.Tensor:
        self.check()
        std = self.std
        if std is None:
            std = 3 * float(model.get_input_embeddings().weight.detach().float().std())
        rows = [list(self.positions)] * bsz if _flat(self.positions) else [list(r) for r in self.positions]
        if len(rows) != bsz:
            raise LocationError(f"GaussianNoise.positions: {len(rows)} rows for a batch of {bsz}")
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(bsz, seq, width, generator=g) * std
        mask = torch.zeros(bsz, seq, 1)
        for b, r in enumerate(rows):
            for p in r:
                if not -seq <= p < seq:
                    raise LocationError(f"GaussianNoise.positions: position {p} is outside a sequence of {seq}")
                mask[b, p] = 1
        return (noise * mask).to(device=device, dtype=dtype)


def _flat(v) -> bool:
    return all(is_int(x) for x in v)


# -- results ------------------------------------------------------------------------------------
@dataclass
class PatchingResult:
    """A sweep's (or an attribution estimate's) metric per grid cell.

    ``per_example``: ``[*grid, batch]``, the metric of each patched run; ``effect``: its mean
    over examples, with ``axes`` naming the grid's dimensions (``layer``, ``position``,
    ``head``) and ``labels`` their values. ``clean`` / ``corrupted``: the metric of the unpatched
    runs, ``[batch]``.
    """

    per_example: torch.Tensor
    axes: tuple[str, ...]
    labels: dict[str, list]
    clean: torch.Tensor
    corrupted: torch.Tensor
    direction: str
    component: str
    method: str = "exact"
    tokens: list[str] | None = field(default=None, repr=False)

    @property
    def effect(self) -> torch.Tensor:
        return self.per_example.mean(-1)

    @property
    def normalized(self) -> torch.Tensor:
        """``(effect - corrupted) / (clean - corrupted)`` on batch means: 0 = corrupted, 1 = clean."""
        c, k = self.corrupted.mean(), self.clean.mean()
        return (self.effect - c) / (k - c)

    def top(self, k: int = 10, normalized: bool = True) -> list[tuple[dict, float]]:
        """The ``k`` cells of largest effect (normalised), as ``({axis: label}, value)``."""
        k = check_int(k, "PatchingResult.top: k", minimum=1)
        normalized = check_bool(normalized, "PatchingResult.top: normalized")
        v = (self.normalized if normalized else self.effect).flatten()
        order = v.argsort(descending=True)[:k]
        shape = self.effect.shape
        out = []
        for i in order.tolist():
            idx = []
            for n in reversed(shape):
                idx.append(i % n)
                i //= n
            idx = idx[::-1]
            out.append(({a: self.labels[a][j] for a, j in zip(self.axes, idx)}, float(v[order[len(out)]])))
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to the folder ``path``: ``patching.json`` (axes, labels, tokens,
        direction, component, method, library version) and ``patching.safetensors``
        (``per_example``, ``clean``, ``corrupted``). Never a pickle. Returns the folder."""
        from ..serialization import (
            check_json,
            check_save_folder,
            make_folder,
            save_tensors,
            write_json,
        )
        from ..version import __version__

        _check_result("PatchingResult.save", list(self.axes), self.labels, self.direction, self.component,
                      self.method, self.tokens, {"per_example": self.per_example, "clean": self.clean,
                                                 "corrupted": self.corrupted}, ConfigError)
        folder = check_save_folder(path, "PatchingResult.save", PATCHING_CONFIG)
        doc = {"library": "pyvene_like", "library_version": __version__, "format_version": 1,
               "kind": "patching_result", "axes": list(self.axes),
               "labels": {k: list(v) for k, v in self.labels.items()}, "tokens": self.tokens,
               "direction": self.direction, "component": self.component, "method": self.method}
        check_json(doc, "the axes, labels and tokens", "PatchingResult.save")
        make_folder(folder, "PatchingResult.save")
        digest = save_tensors({"per_example": self.per_example, "clean": self.clean, "corrupted": self.corrupted},
                              folder / PATCHING_WEIGHTS)
        doc["weights"] = {"file": PATCHING_WEIGHTS, "sha256": digest}
        write_json(folder / PATCHING_CONFIG, doc)
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike) -> PatchingResult:
        """Read a folder written by :meth:`save`; a :class:`~pyvene_like.LoadError` names what
        is missing or inconsistent."""
        from ..errors import LoadError
        from ..serialization import check_versions, load_tensors, read_json
        from ..validation import check_path

        folder = check_path(path, "PatchingResult.load: path", error=LoadError)
        where, doc = read_json(folder, PATCHING_CONFIG, "PatchingResult.load", "PatchingResult.save")
        if not isinstance(doc, dict) or doc.get("kind") != "patching_result":
            raise LoadError(f"{where}: not a saved PatchingResult (no \"kind\": \"patching_result\"); "
                            f"give a folder written by PatchingResult.save")
        if doc.get("library") != "pyvene_like" or not isinstance(doc.get("library_version"), str):
            raise LoadError(f"{where}: 'library' must be \"pyvene_like\" and 'library_version' a version "
                            f"string (as PatchingResult.save writes them), got {doc.get('library')!r} and "
                            f"{doc.get('library_version')!r}")
        check_versions(where, doc, format_version=1)
        axes, labels, tokens = doc.get("axes"), doc.get("labels"), doc.get("tokens")
        _check_fields(where, axes, labels, doc.get("direction"), doc.get("component"), doc.get("method"), tokens,
                      LoadError)
        weights = doc.get("weights")
        digest = weights.get("sha256") if isinstance(weights, dict) else None
        hexdigits = digest[len("sha256:"):] if isinstance(digest, str) and digest.startswith("sha256:") else ""
        if (not isinstance(weights, dict) or weights.get("file") != PATCHING_WEIGHTS or len(hexdigits) != 64
                or any(c not in "0123456789abcdef" for c in hexdigits)):
            raise LoadError(f"{where}: 'weights' must be {{\"file\": {PATCHING_WEIGHTS!r}, \"sha256\": \"sha256:<64 "
                            f"hex digits>\"}} (the hash PatchingResult.save records, checked on load), got {weights!r}")
        tensors = load_tensors(folder / PATCHING_WEIGHTS, caller="PatchingResult.load", sha256=weights.get("sha256"),
                               recorded_in=PATCHING_CONFIG, fix="save the result again")
        _check_tensors(str(folder / PATCHING_WEIGHTS), axes, labels, tensors, LoadError)
        per_example = tensors["per_example"]
        return cls(per_example, tuple(axes), labels, tensors["clean"], tensors["corrupted"],
                   doc["direction"], doc["component"], doc["method"], tokens)


_AXES = (("layer", "position"), ("layer", "head"), ("layer", "head", "position"))
_METHODS = ("exact", "attribution")


def _check_fields(where: str, axes, labels, direction, component, method, tokens, error) -> None:
    """A result's axes, labels and names, as :meth:`PatchingResult.save` writes them."""
    if not isinstance(axes, (list, tuple)) or tuple(axes) not in _AXES:
        raise error(f"{where}: 'axes' must be one of {[list(a) for a in _AXES]}, got {axes!r}")
    names = ("layer", "position", "head")
    if not isinstance(labels, dict) or not set(axes) <= set(labels) <= set(names):
        raise error(f"{where}: 'labels' must hold one list per axis {list(axes)} (keys among {list(names)}), got "
                    f"{sorted(map(str, labels)) if isinstance(labels, dict) else labels!r}")
    for a in labels:
        if a in axes:
            check_int_sequence(labels[a], f"{where}: labels[{a!r}]", minimum=0, unique=True, error=error)
        elif not isinstance(labels[a], list) or not all(is_int(v) for v in labels[a]):
            raise error(f"{where}: labels[{a!r}] must be a list of ints, got {labels[a]!r}")
    if direction not in DIRECTIONS:
        raise error(f"{where}: 'direction' {direction!r} is not accepted; accepted: {', '.join(map(repr, DIRECTIONS))}")
    if method not in _METHODS:
        raise error(f"{where}: 'method' {method!r} is not accepted; accepted: {', '.join(map(repr, _METHODS))}")
    if not isinstance(component, str) or not component:
        raise error(f"{where}: 'component' must be a non-empty component name, got {component!r}")
    if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
        raise error(f"{where}: 'tokens' must be a list of strings or null, got {tokens!r}")


def _check_tensors(where: str, axes, labels, tensors: dict, error) -> None:
    """``per_example`` ``[*grid, batch]`` and ``clean`` / ``corrupted`` ``[batch]``, floating point."""
    for key in ("per_example", "clean", "corrupted"):
        t = tensors.get(key)
        if t is None:
            raise error(f"{where}: tensor {key!r} is missing (it holds {sorted(tensors)})")
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            desc = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise error(f"{where}: {key!r} must be a floating-point tensor (metric values), got {desc}")
    per_example = tensors["per_example"]
    grid = [len(labels[a]) for a in axes]
    if list(per_example.shape[:-1]) != grid or per_example.dim() != len(axes) + 1 or per_example.shape[-1] < 1:
        raise error(f"{where}: 'per_example' has shape {list(per_example.shape)}, but the labels give a grid of "
                    f"{grid} (plus a batch dimension of at least 1)")
    batch = per_example.shape[-1]
    for key in ("clean", "corrupted"):
        if list(tensors[key].shape) != [batch]:
            raise error(f"{where}: {key!r} has shape {list(tensors[key].shape)}; expected [{batch}] (one value per "
                        f"example)")


def _check_result(where: str, axes, labels, direction, component, method, tokens, tensors, error) -> None:
    _check_fields(where, axes, labels, direction, component, method, tokens, error)
    _check_tensors(where, axes, labels, tensors, error)


# -- shared pieces ----------------------------------------------------------------------------
def _as_dict(inputs) -> dict:
    if isinstance(inputs, torch.Tensor):
        return {"input_ids": inputs}
    if isinstance(inputs, Mapping):
        return dict(inputs)
    raise ConfigError(f"inputs: expected a tensor of token ids or a dict of tensors, got {type(inputs).__name__}")


def _shape(inputs: dict) -> tuple[int, int]:
    t = inputs.get("input_ids")
    if t is None:
        t = inputs.get("inputs_embeds")
    if t is None:
        raise ConfigError("inputs: expected input_ids or inputs_embeds")
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        raise ShapeError(f"inputs: input_ids / inputs_embeds must be a [batch, seq] tensor, got "
                         f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    return t.shape[0], t.shape[1]


def _check_inputs(model, inputs: dict, name: str) -> None:
    if "input_ids" in inputs:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        check_token_ids(inputs["input_ids"], f"{name}['input_ids']", vocab_size=vocab)
    _shape(inputs)


def _tile(inputs: dict, k: int) -> dict:
    """Site-major rows: the batch repeated ``k`` times."""
    return {key: v.repeat(k, *([1] * (v.dim() - 1))) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
            for key, v in inputs.items()}


def _call(model, inputs: dict):
    return model(**inputs)


def _n_layers(model) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) if cfg is not None else None
    if n is None:
        raise ConfigError("layers: the model's config does not say how many layers it has; pass layers=[...]")
    return int(n)


@dataclass
class _Grid:
    component: str
    unit: str
    layers: list[int]
    positions: list[int]  # the position axis's labels: positions, or column numbers
    heads: list[int]
    table: torch.Tensor  # [batch, n_positions]: each example's position in each column

    @property
    def axes(self) -> tuple[str, ...]:
        return {"pos": ("layer", "position"), "h": ("layer", "head"), "h.pos": ("layer", "head", "position")}[self.unit]

    @property
    def labels(self) -> dict:
        return {"layer": self.layers, "position": self.positions, "head": self.heads}

    def sites(self) -> list:
        """The sites of one layer, in grid order: positions, heads, or (head, position) pairs."""
        cols = range(self.table.shape[1])
        if self.unit == "pos":
            return list(cols)
        if self.unit == "h":
            return list(self.heads)
        return [(h, j) for h in self.heads for j in cols]

    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.labels[a]) for a in self.axes)


def _position_table(positions, bsz: int, seq: int) -> tuple[torch.Tensor, list[int]]:
    """``positions``: ints shared by the batch, or one equal-length list per example (e.g.
    the subject's last token, wherever it is) -> (``[batch, n]`` table, axis labels)."""
    if positions is None:
        positions = list(range(seq))
    if isinstance(positions, range) or (isinstance(positions, torch.Tensor) and positions.dim() in (1, 2)
                                        and not positions.dtype.is_floating_point):
        positions = positions.tolist() if isinstance(positions, torch.Tensor) else list(positions)
    if not isinstance(positions, (list, tuple)) or not all(
            is_int(p) or (isinstance(p, (list, tuple)) and all(is_int(q) for q in p)) for p in positions):
        raise LocationError(f"positions must be a list of ints (shared by the batch) or one list of ints per "
                            f"example, got {positions!r}")
    per_example = len(positions) > 0 and not _flat(positions)
    rows = [list(r) for r in positions] if per_example else [list(positions)] * bsz
    if per_example and (len(rows) != bsz or len({len(r) for r in rows}) != 1):
        raise LocationError(
            f"positions: per-example positions need one list per example ({bsz}), all of the same "
            f"length; got lengths {[len(r) for r in rows]}"
        )
    if not rows[0]:
        raise LocationError("positions: empty; give at least one position")
    for r in rows:
        for p in r:
            if isinstance(p, bool) or not isinstance(p, int) or not -seq <= p < seq:
                raise LocationError(f"positions: {p!r} is not a position of a sequence of length {seq}")
    table = torch.tensor(rows, dtype=torch.long) % seq
    for r in table.tolist():
        if len(set(r)) != len(r):
            raise LocationError(f"positions: {positions!r} names a position twice (in a sequence of length {seq}); "
                                f"give each grid column once")
    labels = list(range(table.shape[1])) if per_example else table[0].tolist()
    return table, labels


def _grid(model, component: str, unit: str, layers, positions, heads, seq: int, bsz: int = 1) -> _Grid:
    if not isinstance(unit, str) or unit not in UNITS:
        raise ConfigError(f"unit {unit!r} is not a sweep grid; accepted: {', '.join(map(repr, UNITS))}")
    if not isinstance(component, str):
        raise ConfigError(f"component must be a component name (a str such as 'block_output'), got {component!r}")
    is_head = component.startswith("head_")
    if is_head != (unit != "pos"):
        raise ConfigError(
            f"component {component!r} with unit {unit!r}: head units ('h', 'h.pos') need a head "
            f"component (e.g. 'head_attention_value_output'), and unit 'pos' a whole-width one"
        )
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    layers = list(range(_n_layers(model))) if layers is None else check_int_sequence(
        layers, "layers", minimum=0, maximum=n_layers - 1 if is_int(n_layers) else None, unique=True)
    table, labels = _position_table(positions, bsz, seq)
    n_heads = None
    if is_head:
        n_heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
        if heads is None and not is_int(n_heads):
            raise ConfigError("heads: the model's config does not say how many heads it has; pass heads=[...]")
        heads = list(range(n_heads)) if heads is None else check_int_sequence(
            heads, "heads", minimum=0, maximum=n_heads - 1 if is_int(n_heads) else None, unique=True)
    elif heads is not None:
        raise ConfigError(f"heads={heads!r} is only read by head units ('h', 'h.pos'); unit {unit!r} sweeps whole "
                          f"positions, so drop heads=")
    else:
        heads = []
    return _Grid(component, unit, layers, labels, heads, table)


def _read_acts(model, inputs: dict, grid: _Grid, noise_rep=None, layers=None) -> dict[int, torch.Tensor]:
    """Every grid layer's activations of one run: ``[batch, seq, width]`` (unit ``pos``) or
    ``[batch, heads, seq, head_dim]`` (head units), in one pass."""
    layers = grid.layers if layers is None else layers
    reps = [RepresentationConfig(layer, grid.component, "pos" if grid.unit == "pos" else "h",
                                 intervention_type="collect") for layer in layers]
    if noise_rep is not None:
        reps.append(RepresentationConfig(0, "embedding_output", intervention_type="addition"))
    im = IntervenableModel(IntervenableConfig(reps), model)
    srcs = None if noise_rep is None else [None] * len(layers) + [noise_rep]
    locs = None if noise_rep is None else {"base": [None] * len(reps)}
    with torch.no_grad():
        got = im.collect(inputs, unit_locations=locs, source_representations=srcs)
    out = {}
    bsz = _shape(inputs)[0]
    for layer, t in zip(layers, got):
        if grid.unit != "pos":
            t = t.view(bsz, -1, _seq_of(inputs), t.shape[-1])  # head-major units
        out[layer] = t
    return out


def _seq_of(inputs: dict) -> int:
    return _shape(inputs)[1]


def _noise_for(noise: GaussianNoise | None, model, inputs: dict):
    if noise is None:
        return None
    im = IntervenableModel(RepresentationConfig(0, "embedding_output", intervention_type="collect"), model)
    with torch.no_grad():
        emb = im.collect(inputs)[0]
    bsz, seq = _shape(inputs)
    return noise.tensor(model, bsz, seq, emb.shape[-1], emb.device, emb.dtype)


def _run_noised(model, inputs: dict, noise_rep, grad: bool = False):
    """The model's outputs on ``inputs`` with ``noise_rep`` added to the embeddings."""
    im = IntervenableModel(RepresentationConfig(0, "embedding_output", intervention_type="addition"), model)
    with torch.set_grad_enabled(grad):
        return im(inputs, unit_locations={"base": None}, source_representations=[noise_rep])[1]


def _held_bytes(*objs) -> int:
    """Bytes of the tensors in ``objs`` (dicts, lists, tuples, model outputs), each counted once."""
    seen, total, todo = set(), 0, list(objs)
    while todo:
        o = todo.pop()
        if isinstance(o, torch.Tensor):
            if id(o) not in seen:
                seen.add(id(o))
                total += o.numel() * o.element_size()
        elif isinstance(o, dict):
            todo.extend(o.values())
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
    return total


def _rows_for(model, bsz: int, seq: int, max_rows, memory_budget, held: int = 0) -> int:
    """Rows per batched forward: ``max_rows``, else what ``memory_budget`` leaves after ``held``
    bytes (the cached sources and reference outputs the sweep keeps) at a rough per-row cost."""
    if max_rows is not None:
        return max_rows
    cfg = getattr(model, "config", None)
    hidden = getattr(cfg, "hidden_size", 768) or 768
    heads = getattr(cfg, "num_attention_heads", 12) or 12
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    p = next(model.parameters(), None)
    elem = p.element_size() if p is not None else 4
    # Live activations of one row under no_grad: the residual, the MLP's hidden layer and the
    # attention scores, a few copies each (a deliberately rough, conservative estimate).
    per_row = 4 * elem * seq * (4 * hidden + inter + heads * seq)
    return max(bsz, int(max(0, memory_budget - held) // per_row))


def _prepare(model, clean, corrupted, noise, direction, metric=None, tokens=None):
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise ConfigError(f"direction {direction!r}; accepted: 'denoising', 'noising'")
    if not isinstance(metric, str) and not callable(metric):
        raise ConfigError(f"metric must be a function of the model's outputs or 'kl_to_clean', got {metric!r}")
    if callable(metric):
        import inspect

        try:
            inspect.signature(metric).bind(None)
        except TypeError:
            raise ConfigError(f"metric {metric!r} must take one argument (the model's outputs)") from None
        except ValueError:  # builtins without a signature
            pass
    if noise is not None:
        if not isinstance(noise, GaussianNoise):
            raise ConfigError(f"noise must be a GaussianNoise(positions, std, seed), got {noise!r}")
        noise.check()
    if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
        raise ConfigError(f"tokens must be a list of strings (labels of the positions) or None, got {tokens!r}")
    clean = _as_dict(clean)
    _check_inputs(model, clean, "clean")
    if (corrupted is None) == (noise is None):
        raise ConfigError("give either corrupted= (counterfactual inputs) or noise=GaussianNoise(...), not both")
    if corrupted is not None:
        corrupted = _as_dict(corrupted)
        _check_inputs(model, corrupted, "corrupted")
        if _shape(corrupted) != _shape(clean):
            raise ConfigError(
                f"corrupted inputs have shape {_shape(corrupted)} but clean ones {_shape(clean)}; pad "
                f"them to the same length so positions line up"
            )
    return clean, corrupted


def _values(v, rows: int, grad: bool = False) -> torch.Tensor:
    """The metric's return value: a floating tensor of one value per row."""
    if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != rows or not v.dtype.is_floating_point:
        desc = f"a {v.dtype} tensor of shape {list(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)[:80]
        raise ShapeError(f"metric must return a 1-d floating-point tensor of one value per row ({rows} rows), got {desc}")
    if grad and not v.requires_grad:
        raise ConfigError("metric: attribution patching differentiates the metric, but its value has no gradient "
                          "(it was detached or computed without torch); return a differentiable tensor")
    return v


def _resolve_metric(metric: Callable | str, clean_outputs: Callable[[], Any]) -> Callable:
    """A metric function as given, or ``"kl_to_clean"`` made from the clean run's last-position
    logits (``clean_outputs()`` is called only then, without gradients)."""
    if not isinstance(metric, str):
        return metric
    if metric != "kl_to_clean":
        raise ConfigError(f"metric {metric!r}: accepted strings: 'kl_to_clean'; or pass a function")
    with torch.no_grad():
        return kl_to(_logits(clean_outputs())[:, -1])


# -- exact sweeps -------------------------------------------------------------------------------
def patching_sweep(
    model: nn.Module,
    clean: Inputs,
    metric: Callable | str,
    *,
    corrupted: Inputs | None = None,
    noise: GaussianNoise | None = None,
    component: str = "block_output",
    unit: str = "pos",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    direction: str = "denoising",
    window: int = 1,
    max_rows: int | None = None,
    memory_budget: float = 2**30,
    progress: bool = True,
    tokens: list[str] | None = None,
) -> PatchingResult:
    """Patch every site of the grid, one at a time, and record ``metric(outputs) -> [rows]``.

    ``clean`` / ``corrupted``: a batch of inputs (ids or a tokenizer's dict) of the same shape;
    or ``noise=GaussianNoise(subject_positions)`` to corrupt ``clean`` instead. ``metric``: any
    function of the model's outputs returning one value per row (rows are the batch repeated
    once per site in a chunk, site-major), e.g. :func:`logit_diff`, :func:`token_prob`,
    :func:`kl_to`, or ``"kl_to_clean"``. Grid: ``component`` at ``layers`` x ``positions``
    (``unit="pos"``), x ``heads`` (``"h"``: a head at every position) or x heads x positions
    (``"h.pos"``; head components such as ``"head_attention_value_output"``). ``positions``:
    ints shared by the batch (negative from the end), or one equal-length list per example
    (columns such as "subject's last token" that sit at different places; the axis is then
    labelled by column number).

    ``window``: restore a window of layers around each grid layer at once (ROME restores 10
    MLP layers): layers ``l - window // 2`` to ``l - window // 2 + window - 1``, clipped to
    the model. Rows per forward: at most ``max_rows``, else as many as ``memory_budget``
    (bytes) allows after what the sweep holds (the cached sources and the clean output), by a
    rough, conservative estimate of the live activations per row. The budget bounds those;
    the framework's own scratch memory comes on top (about 14 MB on a MiniLM-sized model on
    CPU, measured by ``benchmarks/patching.py``), so budgets of a few tens of MB are exceeded.
    """
    clean, corrupted = _prepare(model, clean, corrupted, noise, direction, metric, tokens)
    bsz, seq = _shape(clean)
    grid = _grid(model, component, unit, layers, positions, heads, seq, bsz)
    if not is_int(window) or window < 1:
        raise ConfigError(f"window: expected a positive int (layers restored together), got {window!r}")
    max_rows = check_optional_positive_int(max_rows, "max_rows")
    memory_budget = check_number(memory_budget, "memory_budget (bytes)", positive=True)
    progress = check_bool(progress, "progress")
    n_layers = _n_layers(model) if window > 1 else None
    spans = {layer: ([layer] if window == 1 else
                     [j for j in range(layer - window // 2, layer - window // 2 + window) if 0 <= j < n_layers])
             for layer in grid.layers}
    needed = sorted({j for span in spans.values() for j in span})
    noise_rep = _noise_for(noise, model, clean)
    with torch.no_grad():
        clean_out = _call(model, clean)
        corr_out = _call(model, corrupted) if corrupted is not None else _run_noised(model, clean, noise_rep)
    metric = _resolve_metric(metric, lambda: clean_out)
    m_clean = _values(metric(clean_out), bsz).detach().float().cpu()
    m_corr = _values(metric(corr_out), bsz).detach().float().cpu()
    del corr_out  # only its metric is needed (a "kl_to_clean" metric holds the clean logits)

    # The source of every patch, read once for the whole grid.
    if direction == "denoising":
        src_acts = _read_acts(model, clean, grid, layers=needed)
        base, base_noise = (corrupted, None) if corrupted is not None else (clean, noise_rep)
    else:
        src_acts = (_read_acts(model, corrupted, grid, layers=needed) if corrupted is not None
                    else _read_acts(model, clean, grid, noise_rep, layers=needed))
        base, base_noise = clean, None

    sites = grid.sites()
    rows = _rows_for(model, bsz, seq, max_rows, memory_budget, _held_bytes(src_acts, clean_out))
    per_chunk = max(1, rows // bsz)
    chunks = [(layer, sites[i:i + per_chunk]) for layer in grid.layers for i in range(0, len(sites), per_chunk)]
    values = {layer: [] for layer in grid.layers}
    from tqdm.auto import tqdm

    ims = {}
    for layer, chunk in tqdm(chunks, disable=not progress, desc=f"patching {component}"):
        im = ims.get(layer)
        if im is None:
            reps = [RepresentationConfig(j, component, unit) for j in spans[layer]]
            if base_noise is not None:
                reps.insert(0, RepresentationConfig(0, "embedding_output", intervention_type="addition"))
            im = ims[layer] = IntervenableModel(IntervenableConfig(reps), model)
        k = len(chunk)
        reps_in, locs_in = [], []
        for j in spans[layer]:
            src, locs = _patch_rows(grid, src_acts[j], chunk, bsz)
            reps_in.append(src)
            locs_in.append(locs)
        if base_noise is not None:
            reps_in.insert(0, base_noise.repeat(k, 1, 1))
            locs_in.insert(0, None)
        with torch.no_grad():
            out = im(_tile(base, k), unit_locations={"base": locs_in}, source_representations=reps_in)[1]
        values[layer].append(_values(metric(out), k * bsz).detach().float().cpu().view(k, bsz))
    per_example = torch.stack([torch.cat(values[layer]) for layer in grid.layers])  # [L, sites, B]
    per_example = per_example.view(*grid.shape(), bsz)
    return PatchingResult(per_example, grid.axes, grid.labels, m_clean, m_corr, direction, component,
                          "exact", tokens)


def _patch_rows(grid: _Grid, acts: torch.Tensor, chunk: list, bsz: int):
    """Source values ``[k * batch, units, width]`` and base locations for a chunk of sites."""
    rows = torch.arange(bsz, device=acts.device).unsqueeze(1)
    if grid.unit == "pos":  # acts [B, seq, d]; chunk: columns of the position table
        pos = grid.table[:, chunk].to(acts.device)  # [B, k]
        src = acts[rows, pos].transpose(0, 1).reshape(len(chunk) * bsz, 1, acts.shape[-1])
        return src, [[p] for p in pos.T.reshape(-1).tolist()]
    if grid.unit == "h":  # acts [B, H, seq, hd]: head h at every position
        h = torch.tensor(chunk, device=acts.device)
        src = acts[:, h].transpose(0, 1).reshape(len(chunk) * bsz, acts.shape[2], acts.shape[3])
        return src, [[h_] for h_ in chunk for _ in range(bsz)]
    hs = torch.tensor([h for h, _ in chunk], device=acts.device)
    pos = grid.table[:, [j for _, j in chunk]].to(acts.device)  # [B, k]
    src = acts[rows, hs.unsqueeze(0), pos].transpose(0, 1).reshape(len(chunk) * bsz, 1, acts.shape[3])
    locs = ([[h] for h, _ in chunk for _ in range(bsz)], [[p] for p in pos.T.reshape(-1).tolist()])
    return src, locs


# -- attribution patching ---------------------------------------------------------------------
def attribution_patching(
    model: nn.Module,
    clean: Inputs,
    metric: Callable | str,
    *,
    corrupted: Inputs | None = None,
    noise: GaussianNoise | None = None,
    component: str = "block_output",
    unit: str = "pos",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    direction: str = "denoising",
    tokens: list[str] | None = None,
) -> PatchingResult:
    """The grid of :func:`patching_sweep`, estimated to first order from one forward of the
    source run and one forward + backward of the base run:
    ``metric(base) + sum((a_source - a_base) * d metric / d a_base)`` per site (summed over the
    site's width, and over positions for unit ``"h"``)."""
    clean, corrupted = _prepare(model, clean, corrupted, noise, direction, metric, tokens)
    bsz, seq = _shape(clean)
    grid = _grid(model, component, unit, layers, positions, heads, seq, bsz)
    noise_rep = _noise_for(noise, model, clean)
    metric = _resolve_metric(metric, lambda: _call(model, clean))
    clean_acts = _read_acts(model, clean, grid)
    corr_acts = _read_acts(model, corrupted, grid) if corrupted is not None else _read_acts(model, clean, grid, noise_rep)
    if direction == "denoising":
        src_acts, base, base_noise = clean_acts, (corrupted if corrupted is not None else clean), \
            (None if corrupted is not None else noise_rep)
    else:
        src_acts, base, base_noise = corr_acts, clean, None

    # Zero-valued additions at every grid layer: their gradients are the metric's gradients
    # with respect to the activations.
    h_unit = "pos" if unit == "pos" else "h"
    reps = [RepresentationConfig(layer, component, h_unit, intervention_type="addition") for layer in grid.layers]
    deltas = [torch.zeros_like(clean_acts[layer] if unit == "pos" else
                               clean_acts[layer].flatten(1, 2), requires_grad=True) for layer in grid.layers]
    inputs = list(deltas)
    if base_noise is not None:
        reps.append(RepresentationConfig(0, "embedding_output", intervention_type="addition"))
        inputs.append(base_noise)
    im = IntervenableModel(IntervenableConfig(reps), model)
    with torch.enable_grad():
        out = im(base, unit_locations={"base": [None] * len(reps)}, source_representations=inputs)[1]
        m = _values(metric(out), bsz, grad=True)
        grads = torch.autograd.grad(m.sum(), deltas)
    m_base = m.detach().float().cpu()
    with torch.no_grad():
        if direction == "denoising":
            m_corr, m_clean = m_base, _values(metric(_call(model, clean)), bsz).float().cpu()
        else:
            m_clean = m_base
            m_corr = _values(metric(_call(model, corrupted) if corrupted is not None else
                                    _run_noised(model, clean, noise_rep)), bsz).float().cpu()

    per_layer = []
    base_acts = corr_acts if direction == "denoising" else clean_acts
    for layer, g in zip(grid.layers, grads):
        diff = (src_acts[layer] - base_acts[layer]).float()
        if unit == "pos":
            est = (diff * g.float()).sum(-1)  # [B, seq]
            est = est.gather(1, grid.table.to(est.device)).T  # [P, B]
        else:
            g = g.view_as(diff).float()
            est = (diff * g).sum(-1)  # [B, H, seq]
            if unit == "h":
                est = est.sum(-1)[:, grid.heads].T  # [H, B]
            else:
                est = est[:, grid.heads]  # [B, H, seq]
                idx = grid.table.to(est.device).unsqueeze(1).expand(-1, est.shape[1], -1)
                est = est.gather(2, idx).permute(1, 2, 0)  # [H, P, B]
        per_layer.append(est.detach().cpu())
    per_example = torch.stack(per_layer) + m_base
    return PatchingResult(per_example, grid.axes, grid.labels, m_clean, m_corr, direction, component,
                          "attribution", tokens)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(v)
    r[v.argsort()] = torch.arange(len(v), dtype=v.dtype)
    return r


def compare_attribution(exact: PatchingResult, attribution: PatchingResult, k: int = 10) -> dict:
    """How well attribution patching matches the exact sweep on the same grid: Spearman rank
    correlation and Pearson correlation of the per-cell effects (batch means), and the share of
    the exact top-``k`` cells (largest ``|effect - base|``) that the estimate also puts in its
    top ``k``."""
    if exact.effect.shape != attribution.effect.shape:
        raise ConfigError(
            f"compare_attribution: grids differ, {tuple(exact.effect.shape)} vs {tuple(attribution.effect.shape)}"
        )
    base = exact.corrupted.mean() if exact.direction == "denoising" else exact.clean.mean()
    a = (exact.effect - base).flatten().double()
    b = (attribution.effect - base).flatten().double()
    ra, rb = _ranks(a), _ranks(b)
    spearman = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    k = min(k, len(a))
    top_a = set(a.abs().topk(k).indices.tolist())
    top_b = set(b.abs().topk(k).indices.tolist())
    return {"spearman": spearman, "pearson": pearson, "top_k": k,
            "top_k_agreement": len(top_a & top_b) / k if k else math.nan}


# -- plots --------------------------------------------------------------------------------------
def plot_patching(result: PatchingResult, *, tokens: list[str] | None = None, normalized: bool = True,
                  head_layer: int | None = None, ax: Axes | None = None, path: str | Path | None = None,
                  title: str | None = None) -> Figure:
    """A heatmap of a sweep: layers (rows) by positions or heads (columns), with token labels
    on the position axis. A ``layer x head x position`` grid needs ``head_layer`` (one layer's
    heads x positions). Saved to ``path`` when given; returns the figure."""
    from matplotlib.figure import Figure

    values = (result.normalized if normalized else result.effect).numpy()
    axes = list(result.axes)
    if len(axes) == 3:
        if head_layer is None:
            raise ConfigError("plot_patching: a layer x head x position grid needs head_layer=<layer>")
        values = values[result.labels["layer"].index(head_layer)]
        axes = axes[1:]
    rows_axis, cols_axis = axes
    tokens = tokens if tokens is not None else result.tokens
    # A bare Figure (no pyplot): no backend is switched and nothing stays open.
    fig = ax.figure if ax is not None else Figure(figsize=(max(4, 0.45 * values.shape[1] + 2),
                                                          max(3, 0.35 * values.shape[0] + 1.5)))
    ax = ax if ax is not None else fig.add_subplot()
    im = ax.imshow(values, aspect="auto", cmap="Purples" if normalized else "viridis",
                   vmin=None if not normalized else min(0.0, float(values.min())),
                   vmax=None if not normalized else max(1.0, float(values.max())))
    col_labels = result.labels[cols_axis]
    if cols_axis == "position" and tokens is not None:
        col_labels = [f"{tokens[p]!s} ({p})" if p < len(tokens) else str(p) for p in col_labels]
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=90 if cols_axis == "position" else 0)
    ax.set_yticks(range(len(result.labels[rows_axis])), [str(r) for r in result.labels[rows_axis]])
    ax.set_xlabel(cols_axis)
    ax.set_ylabel(rows_axis if len(result.axes) == 2 else f"head (layer {head_layer})")
    ax.set_title(title or f"{result.method} {result.direction}: {result.component}")
    fig.colorbar(im, ax=ax, label="normalised effect\n(0 = corrupted, 1 = clean)" if normalized else "metric")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_attribution_vs_exact(exact: PatchingResult, attribution: PatchingResult, *, ax: Axes | None = None,
                              path: str | Path | None = None) -> Figure:
    """One point per grid cell: the exact effect against the attribution estimate (both minus
    the base run's metric), with the rank correlation in the title."""
    from matplotlib.figure import Figure

    stats = compare_attribution(exact, attribution)
    base = exact.corrupted.mean() if exact.direction == "denoising" else exact.clean.mean()
    a = (exact.effect - base).flatten().numpy()
    b = (attribution.effect - base).flatten().numpy()
    fig = ax.figure if ax is not None else Figure(figsize=(4.5, 4.5))
    ax = ax if ax is not None else fig.add_subplot()
    ax.scatter(a, b, s=12, alpha=0.7)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("exact patching effect")
    ax.set_ylabel("attribution patching estimate")
    ax.set_title(f"{exact.component}: Spearman {stats['spearman']:.2f}, "
                 f"top-{stats['top_k']} {stats['top_k_agreement']:.0%}")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig
