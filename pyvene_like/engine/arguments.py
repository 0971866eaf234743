"""Validating and normalising the arguments of a call, shared by ``forward`` and ``generate``.

Each function turns one user-facing argument (``unit_locations``, ``sources``,
``source_representations``, ``subspaces``) into one raw entry per compiled slot, raising a
library error that names the argument, the value and what is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError, LocationError, ShapeError
from ..validation import is_int
from .plan import Slot


def batch_size(inputs, label: str) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    values = inputs.values() if type(inputs) is dict or isinstance(inputs, Mapping) else inputs if isinstance(inputs, (list, tuple)) else ()
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    raise ShapeError(
        f"{label}: expected a tensor or a dict of tensors (e.g. a tokenizer's output), got "
        f"{type(inputs).__name__}"
    )


def same_inputs(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if a.keys() != b.keys():
            return False
        return all(same_inputs(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
    return False


def expand_inputs(inputs, n: int):
    """A batch-1 model input seen as a batch of ``n`` (views, no copies): tensors whose first
    dimension is 1 are expanded; everything else is passed as is."""
    def grow(v):
        return v.expand(n, *v.shape[1:]) if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 1 else v
    if isinstance(inputs, torch.Tensor):
        return grow(inputs)
    if type(inputs) is dict or isinstance(inputs, Mapping):
        return {k: grow(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(grow(v) for v in inputs)
    return inputs


# -- normalising the call's arguments ------------------------------------------------------
def per_slot(value, n: int, label: str):
    """A per-intervention list of length n, or a single value broadcast to all."""
    if isinstance(value, (list, tuple)) and len(value) == n and not all(isinstance(v, int) for v in value):
        return list(value)
    if value is None or isinstance(value, int):
        return [value] * n
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
        return list(value)
    raise LocationError(
        f"{label}: expected one entry per intervention ({n}), e.g. [n_interventions][batch][units], "
        f"or a single int for all; got {value!r}"
    )


def split_pair(value, n: int, label: str):
    """The value of 'sources->base': an int, an (int, int) pair, or (source_locs, base_locs)."""
    if value is None or isinstance(value, int):
        return [value] * n, [value] * n
    if isinstance(value, (tuple, list)) and len(value) == 2:
        src, base = value
        return per_slot(src, n, label + "[0]"), per_slot(base, n, label + "[1]")
    raise LocationError(
        f"{label}: expected an int, an (source, base) pair of ints, or a pair (source_locations, "
        f"base_locations) each [n_interventions][batch][units]; got {value!r}"
    )


def normalize_locations(unit_locations, slots: list[Slot], mode: str):
    """-> (source locations, base locations), each a list with one raw entry per slot."""
    n = len(slots)
    if unit_locations is None or isinstance(unit_locations, int):
        return [unit_locations] * n, [unit_locations] * n
    if not isinstance(unit_locations, Mapping):
        raise LocationError(
            f"unit_locations: expected None, an int, or a dict like {{'sources->base': (src, base)}} "
            f"or {{'base': locs}}; got {type(unit_locations).__name__}"
        )
    src = [None] * n
    base = [None] * n
    seen_pair = False
    for key, value in unit_locations.items():
        label = f"unit_locations[{key!r}]"
        if key == "sources->base":
            src, base = split_pair(value, n, label)
            seen_pair = True
        elif key == "base":
            if seen_pair:
                raise LocationError("unit_locations: give either 'sources->base' or 'base', not both")
            base = per_slot(value, n, label)
            src = list(base)
        elif isinstance(key, str) and key.startswith("source_") and "->" in key:
            left, right = key.split("->", 1)
            try:
                i = int(left[len("source_"):])
            except ValueError:
                i = -1
            expected_right = "base" if i == n - 1 else f"source_{i + 1}"
            if mode != "serial" or not 0 <= i < n or right != expected_right:
                raise LocationError(
                    f"unit_locations: key {key!r} is not valid here; in mode='serial' intervention i "
                    f"uses 'source_i->source_(i+1)' and the last 'source_{n - 1}->base'; in "
                    f"parallel mode use 'sources->base'"
                )
            s, b = split_pair(value, 1, label)
            src[i], base[i] = s[0], b[0]
        else:
            raise LocationError(
                f"unit_locations: key {key!r} is not accepted; accepted: 'sources->base', 'base'"
                + (", 'source_i->source_j'" if mode == "serial" else "")
            )
    return src, base


def normalize_sources(sources, slots: list[Slot], has_repr: list[bool], base_bsz: int, *,
                      skip_none: bool = False, base_only: bool = False) -> list:
    """-> per slot the source input to run (or None).

    As in pyvene, ``skip_none`` lets a ``None`` entry of a sources list skip the interventions
    of its group, and ``base_only`` (a call with neither sources nor locations) skips every
    intervention that needs a source: the caller skips the slots that need a source and got
    ``None``. Otherwise a missing source is an error.
    """
    needs = [s.intervention.source_from == "source" and not r for s, r in zip(slots, has_repr)]
    if sources is None:
        sources = []
    elif not isinstance(sources, (list, tuple)):
        sources = [sources]
    if not sources:
        missing = [s for s, need in zip(slots, needs) if need]
        if missing and not base_only:
            raise ConfigError(
                f"{missing[0].label} needs a source: pass sources=[...] or source_representations"
            )
        return [None] * len(slots)
    n_groups = max(s.group for s in slots) + 1
    if len(sources) == 1:
        per_slot = [sources[0]] * len(slots)
    elif len(sources) == n_groups:
        per_slot = [sources[s.group] for s in slots]
    else:
        raise ConfigError(
            f"sources: got {len(sources)} inputs for {n_groups} source group(s); give one source "
            f"for all interventions, or one per intervention (interventions sharing a group_key share one)"
        )
    out = []
    for slot, need, src in zip(slots, needs, per_slot):
        if not need:
            out.append(None)
            continue
        if src is None:
            if skip_none:
                out.append(None)
                continue
            raise ConfigError(f"{slot.label} needs a source, but its entry in sources is None")
        bsz = batch_size(src, f"sources[{slot.group}]")
        if bsz != base_bsz and bsz != 1:
            raise ShapeError(
                f"sources[{slot.group}] has batch size {bsz} but base has {base_bsz}; give one source "
                f"per base example, or a batch of 1 for every example"
            )
        out.append(src)
    return out


def normalize_source_representations(source_representations, slots: list[Slot]) -> list:
    """Per slot, the representation to use: the call's (checked) or the config's, else None."""
    reps = [s.rep.source_representation for s in slots]
    if source_representations is None:
        return reps
    given = _given_representations(source_representations, slots, reps)
    for i, (value, config_value) in enumerate(zip(given, reps)):
        if value is not config_value and value is not None:
            _check_given(value, f"source_representations[{i}]")
    return given


def _check_given(value, field: str) -> None:
    """A representation passed at call time: a floating-point tensor of at least one dimension.
    Only the dtype and rank are checked here (a finiteness check would synchronise a GPU on
    every call); configs check their own vectors fully when they are built."""
    if isinstance(value, torch.Tensor):
        if not value.dtype.is_floating_point:
            raise ShapeError(
                f"{field} must be a floating-point tensor, got dtype {value.dtype}; accepted: float16, "
                f"bfloat16, float32, float64 (cast it yourself, e.g. .float(), so nothing is lost silently)"
            )
        if value.dim() == 0:
            raise ShapeError(f"{field} is a 0-d tensor; accepted: [width], [units, width] or [batch, units, width]")


def _given_representations(source_representations, slots: list[Slot], reps: list) -> list:
    n = len(slots)
    reps = list(reps)
    if isinstance(source_representations, torch.Tensor):
        # One tensor goes to every intervention that takes a source (pyvene broadcasts it).
        for i, s in enumerate(slots):
            if s.intervention.source_from == "source":
                reps[i] = source_representations
        return reps
    if isinstance(source_representations, Mapping):
        keys = {s.key: s.index for s in slots}
        for k, v in source_representations.items():
            i = k if isinstance(k, int) else keys.get(k)
            if i is None or not 0 <= i < n:
                raise ShapeError(
                    f"source_representations: key {k!r} names no intervention; accepted: indices "
                    f"0..{n - 1} or keys {sorted(keys)}"
                )
            reps[i] = v
        return reps
    if isinstance(source_representations, (list, tuple)):
        if len(source_representations) != n:
            raise ShapeError(
                f"source_representations: got {len(source_representations)} entries for {n} interventions"
            )
        return [v if v is not None else r for v, r in zip(source_representations, reps)]
    raise ShapeError(
        f"source_representations: expected a tensor, a list or a dict of tensors, got "
        f"{type(source_representations).__name__}"
    )


def fit_source_repr(t, base_vals: torch.Tensor, slot) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.device != base_vals.device or t.dtype != base_vals.dtype:
        t = t.to(device=base_vals.device, dtype=base_vals.dtype)
    try:
        return t.expand_as(base_vals)
    except RuntimeError:
        raise ShapeError(
            f"{slot.label}: source activations: shape {tuple(t.shape)} does not fit the units {tuple(base_vals.shape)} "
            f"([batch, units, width]); accepted: [width], [units, width] or [batch, units, width]"
        ) from None


def check_repr(t, slot: Slot):
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    width = slot.site.head_dim if slot.heads else slot.site.width
    if width is not None and t.shape[-1] != width:
        raise ShapeError(
            f"source_representations for {slot.label}: last dimension is {t.shape[-1]} but the "
            f"site's units have width {width}"
        )
    return t


def normalize_subspaces(subspaces, slots: list[Slot]):
    """-> per slot its subspaces (or ``None`` when the call gives none)."""
    if subspaces is None:
        return None
    n = len(slots)
    if isinstance(subspaces, (list, tuple)) and subspaces and all(is_int(v) for v in subspaces):
        subspaces = [list(subspaces)] * n  # one flat list of ids: the same for every intervention
    if isinstance(subspaces, (list, tuple)) and len(subspaces) != n and n > 1:
        raise LocationError(f"subspaces: got {len(subspaces)} entries for {n} interventions")
    sub_list = per_slot(subspaces, n, "subspaces")
    for slot, sub in zip(slots, sub_list):
        if sub is not None and not slot.intervention.supports_subspaces:
            raise ConfigError(
                f"subspaces: {slot.label} does not take subspaces (it learns its own mask); "
                f"pass None for it"
            )
    return sub_list


_UNHASHABLE = object()


def freeze(value):
    """A hashable stand-in for a location/subspace argument made of ints, strings, ``None``,
    lists, tuples and dicts (``_UNHASHABLE`` for anything else, e.g. a tensor): the key under
    which a recurring argument's normalised form is cached."""
    t = type(value)
    if value is None or t is int or t is str:
        return value
    if t is list or t is tuple:
        out = tuple([v if type(v) is int else freeze(v) for v in value])
        return _UNHASHABLE if _UNHASHABLE in out else (t is list, out)
    if t is dict:
        out = tuple([(k, freeze(v)) for k, v in value.items()])
        return _UNHASHABLE if any(v is _UNHASHABLE or type(k) not in (int, str) for k, v in out) else ("d", out)
    return _UNHASHABLE


def is_frozen(key) -> bool:
    return key is not _UNHASHABLE
