"""Running source and base passes with hooks.

One call: locations are normalised into index tensors once; every *distinct* source input
is run once with collect hooks that keep only the needed units and stop the pass right after
its last needed site; the base is run once with write hooks (gather -> intervention ->
scatter). All hooks are removed in ``finally`` (the HookSet context).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError, LocationError, ShapeError
from .hooks import HookSet, StopForward, find_input, output_tensor, replace_input, replace_output
from .plan import Slot
from .units import gather, make_units, scatter


def call_model(model, inputs):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def batch_size(inputs, label: str) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (list, tuple)) else ()
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    raise ShapeError(
        f"{label}: expected a tensor or a dict of tensors (e.g. a tokenizer's output), got "
        f"{type(inputs).__name__}"
    )


def _same_inputs(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if a.keys() != b.keys():
            return False
        return all(_same_inputs(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
    return False


# -- normalising the call's arguments ------------------------------------------------------
def _per_slot(value, n: int, label: str):
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


def _split_pair(value, n: int, label: str):
    """The value of 'sources->base': an int, an (int, int) pair, or (source_locs, base_locs)."""
    if value is None or isinstance(value, int):
        return [value] * n, [value] * n
    if isinstance(value, (tuple, list)) and len(value) == 2:
        src, base = value
        return _per_slot(src, n, label + "[0]"), _per_slot(base, n, label + "[1]")
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
            src, base = _split_pair(value, n, label)
            seen_pair = True
        elif key == "base":
            if seen_pair:
                raise LocationError("unit_locations: give either 'sources->base' or 'base', not both")
            base = _per_slot(value, n, label)
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
            s, b = _split_pair(value, 1, label)
            src[i], base[i] = s[0], b[0]
        else:
            raise LocationError(
                f"unit_locations: key {key!r} is not accepted; accepted: 'sources->base', 'base'"
                + (", 'source_i->source_j'" if mode == "serial" else "")
            )
    return src, base


def normalize_sources(sources, slots: list[Slot], has_repr: list[bool], base_bsz: int) -> list:
    """-> per slot the source input to run (or None)."""
    needs = [s.intervention.source_from == "source" and not r for s, r in zip(slots, has_repr)]
    if sources is None:
        sources = []
    elif not isinstance(sources, (list, tuple)):
        sources = [sources]
    if not sources:
        missing = [s for s, need in zip(slots, needs) if need]
        if missing:
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
            raise ConfigError(f"{slot.label} needs a source, but its entry in sources is None")
        bsz = batch_size(src, f"sources[{slot.group}]")
        if bsz != base_bsz:
            raise ShapeError(
                f"sources[{slot.group}] has batch size {bsz} but base has {base_bsz}; they must match"
            )
        out.append(src)
    return out


def normalize_source_representations(source_representations, slots: list[Slot]) -> list:
    n = len(slots)
    reps = [s.rep.source_representation for s in slots]
    if source_representations is None:
        return reps
    if isinstance(source_representations, torch.Tensor):
        takers = [i for i, s in enumerate(slots) if s.intervention.source_from == "source"]
        if len(takers) != 1:
            raise ShapeError(
                f"source_representations: a single tensor is ambiguous with {len(takers)} interventions "
                f"taking sources; pass a dict {{index or key: tensor}} or a list with one entry per intervention"
            )
        reps[takers[0]] = source_representations
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


def _fit_source_repr(t, base_vals: torch.Tensor, label: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.device != base_vals.device or t.dtype != base_vals.dtype:
        t = t.to(device=base_vals.device, dtype=base_vals.dtype)
    try:
        return t.expand_as(base_vals)
    except RuntimeError:
        raise ShapeError(
            f"{label}: shape {tuple(t.shape)} does not fit the units {tuple(base_vals.shape)} "
            f"([batch, units, width]); accepted: [width], [units, width] or [batch, units, width]"
        ) from None


# -- passes --------------------------------------------------------------------------------
def _by_module(items):
    """Group (slot, ...) items by (module, io), keeping execution-independent config order."""
    groups: dict = {}
    for item in items:
        slot = item[0]
        groups.setdefault((id(slot.site.module), slot.site.io), (slot.site.module, slot.site.io, []))[2].append(item)
    return list(groups.values())


def collect_pass(model, inputs, requests, stop_early: bool = True, writes=()) -> dict:
    """Run ``inputs`` and keep, per request ``(slot, units)``, the gathered units.

    ``writes`` are base-style write requests applied in the same pass (serial mode).
    """
    out: dict = {}
    reads = _by_module(requests)
    pending = {(id(m), io) for m, io, _ in reads}
    with HookSet() as hooks:
        _install_writes(hooks, writes, None)
        for module, io, items in reads:
            key = (id(module), io)

            def read(x, items=items, key=key):
                if key not in pending:
                    return
                for slot, units in items:
                    sel = gather(x, units, slot.site, slot.heads)
                    # A view of the activation is copied: the model may still change it in
                    # place later in the pass (Falcon adds attention into the MLP output).
                    if sel.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                        sel = sel.clone()
                    out[slot.index] = sel
                pending.discard(key)
                if stop_early and not pending:
                    raise StopForward

            if io == "output":
                hooks.post(module, lambda m, a, k, o, read=read: read(output_tensor(o)))
            else:
                hooks.pre(module, lambda m, a, k, read=read: read(find_input(a, k)[0]))
        try:
            call_model(model, inputs)
        except StopForward:
            pass
    missing = [slot for slot, _ in requests if slot.index not in out]
    if missing:
        raise ConfigError(
            f"{missing[0].label}: the source pass never reached {missing[0].site.description}; is the "
            f"module used in this model's forward for these inputs?"
        )
    return out


def _install_writes(hooks: HookSet, writes, collected: dict | None, fired: set | None = None) -> None:
    """``writes``: (slot, units, source tensor or None, subspaces) applied in the base pass.

    ``fired`` collects the indices of slots whose hook ran, so that an intervention on a
    module the forward never calls is an error instead of a silent no-op.
    """
    for module, io, items in _by_module(writes):

        def apply(x, args, kwargs, inplace, items=items):
            if fired is not None:
                fired.update(item[0].index for item in items)
            for slot, units, src, subspaces in items:
                iv = slot.intervention
                vals = gather(x, units, slot.site, slot.heads)
                if iv.source_from == "module_input":
                    src = gather(find_input(args, kwargs)[0], units, slot.site, slot.heads)
                    if src.shape != vals.shape:
                        raise ShapeError(
                            f"{slot.label}: the module's input {tuple(src.shape)} and output "
                            f"{tuple(vals.shape)} differ in shape, so it cannot be skipped"
                        )
                elif src is not None:
                    if src.shape != vals.shape:
                        src = _fit_source_repr(src, vals, f"{slot.label}: source activations")
                    elif src.device != vals.device:
                        src = src.to(vals.device)
                # Straight to forward() unless someone hooked the intervention module itself.
                if iv._forward_hooks or iv._forward_pre_hooks:
                    new = iv(vals, src, subspaces)
                else:
                    new = iv.forward(vals, src, subspaces)
                if not iv.modifies_output:
                    if collected is not None:
                        collected[slot.index] = new
                    continue
                if new.shape != vals.shape:
                    raise ShapeError(
                        f"{slot.label} returned shape {tuple(new.shape)}; expected {tuple(vals.shape)}"
                    )
                x = scatter(x, units, slot.site, slot.heads, new, inplace)
            return x

        if io == "output":

            def post(m, args, kwargs, output, apply=apply):
                x = output_tensor(output)
                inplace = not (x.requires_grad and torch.is_grad_enabled())
                if inplace:
                    inp = find_input(args, kwargs)[0]
                    inplace = inp is None or inp.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
                new = apply(x, args, kwargs, inplace)
                return None if new is x else replace_output(output, new)

            hooks.post(module, post)
        else:

            def pre(m, args, kwargs, apply=apply):
                x, where = find_input(args, kwargs)
                new = apply(x, args, kwargs, False)
                return None if new is x else replace_input(args, kwargs, where, new)

            hooks.pre(module, pre)


def _model_needs_grad(model) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())


def run(model, slots: list[Slot], mode: str, base, sources=None, unit_locations=None,
        source_representations=None, subspaces=None, output_original_output=False):
    n = len(slots)
    bsz = batch_size(base, "base")
    src_locs, base_locs = normalize_locations(unit_locations, slots, mode)
    reprs = normalize_source_representations(source_representations, slots)
    has_repr = [r is not None for r in reprs]
    subspace_list = _per_slot(subspaces, n, "subspaces") if subspaces is not None else [None] * n
    if subspaces is not None and isinstance(subspaces, (list, tuple)) and len(subspaces) != n and n > 1:
        raise LocationError(f"subspaces: got {len(subspaces)} entries for {n} interventions")

    def units_for(i, loc, side):
        s = slots[i]
        # int / None locations recur call after call: their index objects are cached.
        key = (side, loc, bsz) if loc is None or type(loc) is int else None
        units = s.units_cache.get(key) if key is not None else None
        if units is None:
            units = make_units(loc, s.rep.unit, bsz, s.site.n_heads if s.heads else None,
                               f"unit_locations ({side} of {s.label})")
            if key is not None:
                s.units_cache[key] = units
        return units

    base_units = [units_for(i, base_locs[i], "base") for i in range(n)]
    original = None
    if output_original_output:
        original = call_model(model, base)
    collected: dict = {}

    if mode == "serial":
        intervened = _run_serial(model, slots, base, sources, src_locs, base_units, reprs,
                                 subspace_list, bsz, units_for, collected)
    else:
        per_slot_src = normalize_sources(sources, slots, has_repr, bsz)
        src_acts: list = [None] * n
        # One pass per distinct source input (by identity, then by equal contents).
        distinct: list = []
        for i, src in enumerate(per_slot_src):
            if src is None:
                continue
            for entry in distinct:
                if _same_inputs(entry[0], src):
                    entry[1].append(i)
                    break
            else:
                distinct.append((src, [i]))
        if distinct:
            with torch.set_grad_enabled(_model_needs_grad(model)):
                for src, idxs in distinct:
                    reqs = [(slots[i], units_for(i, src_locs[i], "source")) for i in idxs]
                    acts = collect_pass(model, src, reqs)
                    for i in idxs:
                        src_acts[i] = acts[i]
        writes = []
        for i, slot in enumerate(slots):
            src = src_acts[i] if src_acts[i] is not None else reprs[i]
            if reprs[i] is not None and src_acts[i] is None and slot.intervention.source_from == "source":
                src = _check_repr(reprs[i], slot)
            writes.append((slot, base_units[i], src, subspace_list[i]))
        fired: set = set()
        with HookSet() as hooks:
            _install_writes(hooks, writes, collected, fired)
            intervened = call_model(model, base)
        _check_fired(slots, fired)
    return original, intervened, [collected[i] for i in sorted(collected)]


def _check_fired(slots, fired: set) -> None:
    missed = [s for s in slots if s.index not in fired]
    if missed:
        raise ConfigError(
            f"{missed[0].label}: the base pass never reached {missed[0].site.description}; is the "
            f"module used in this model's forward for these inputs?"
        )


def _check_repr(t, slot: Slot):
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    width = slot.site.head_dim if slot.heads else slot.site.width
    if width is not None and t.shape[-1] != width:
        raise ShapeError(
            f"source_representations for {slot.label}: last dimension is {t.shape[-1]} but the "
            f"site's units have width {width}"
        )
    return t


def _run_serial(model, slots, base, sources, src_locs, base_units, reprs, subspace_list, bsz,
                units_for, collected):
    """Intervention i reads stream i and writes into stream i+1 (streams: sources..., base)."""
    n = len(slots)
    if sources is None:
        sources = []
    elif not isinstance(sources, (list, tuple)):
        sources = [sources]
    if len(sources) != n:
        raise ConfigError(
            f"sources: mode='serial' with {n} interventions needs {n} sources (stream i feeds "
            f"intervention i, which writes into stream i+1; the last writes into base), got {len(sources)}"
        )
    streams = list(sources) + [base]
    for j, s in enumerate(streams[:-1]):
        b = batch_size(s, f"sources[{j}]")
        if b != bsz:
            raise ShapeError(f"sources[{j}] has batch size {b} but base has {bsz}; they must match")
    # tgt_units[i]: where intervention i writes in stream i+1 (given as the base side of its pair)
    acts = None
    grad = _model_needs_grad(model)
    for i in range(n + 1):
        target = streams[i]
        writes = []
        if i > 0:
            prev = slots[i - 1]
            src = acts[prev.index] if acts is not None else reprs[i - 1]
            writes.append((prev, base_units[i - 1], src, subspace_list[i - 1]))
        if i == n:
            fired: set = set()
            with HookSet() as hooks:
                _install_writes(hooks, writes, collected, fired)
                out = call_model(model, target)
            _check_fired(slots[-1:], fired)
            return out
        with torch.set_grad_enabled(grad or (torch.is_grad_enabled() and i > 0)):
            acts = collect_pass(model, target, [(slots[i], units_for(i, src_locs[i], "source"))], writes=writes)
    raise AssertionError("unreachable")  # pragma: no cover
