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


def _fit_source_repr(t, base_vals: torch.Tensor, slot) -> torch.Tensor:
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


# -- passes --------------------------------------------------------------------------------
class _CallState:
    """What one call hands to the prebuilt hooks (indexed by slot)."""

    __slots__ = ("units", "src", "subspaces", "collected", "fired", "reads", "pending", "acts")

    def __init__(self, n: int):
        self.units = [None] * n
        self.src = [None] * n
        self.subspaces = [None] * n
        self.collected: dict = {}
        self.fired = [False] * n
        self.reads: dict = {}  # (module id, io) -> [(slot, units)] for a source pass
        self.pending: set = set()
        self.acts: dict = {}


def _aliases_input(args, kwargs, x) -> bool:
    inp = args[0] if args and type(args[0]) is torch.Tensor else find_input(args, kwargs)[0]
    return inp is not None and inp.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


class Program:
    """A compiled plan: hook functions built once, reading per-call state from ``self.state``.

    A call registers the prebuilt hooks, runs, and removes them in ``finally``; nothing is
    rebuilt per call.
    """

    def __init__(self, slots: list[Slot], mode: str):
        self.slots = slots
        self.mode = mode
        self.n_groups = max(s.group for s in slots) + 1
        self.state: _CallState | None = None
        groups: dict = {}
        for slot in slots:
            key = (id(slot.site.module), slot.site.io)
            groups.setdefault(key, (slot.site.module, slot.site.io, []))[2].append(slot)
        self.write_hooks = [
            (module, io, self._write_hook(io, tuple(members))) for module, io, members in groups.values()
        ]
        self.read_hooks = {
            key: (module, io, self._read_hook(io, key)) for key, (module, io, _) in groups.items()
        }

    # -- hook factories -----------------------------------------------------------------------
    def _apply(self, members, x, args, kwargs, inplace):
        st = self.state
        for slot in members:
            i = slot.index
            if st.units[i] is None:  # not active in this pass (serial mode)
                continue
            st.fired[i] = True
            units = st.units[i]
            iv = slot.intervention
            vals = gather(x, units, slot.site, slot.heads)
            src = st.src[i]
            if iv.source_from == "module_input":
                src = gather(find_input(args, kwargs)[0], units, slot.site, slot.heads)
                if src.shape != vals.shape:
                    raise ShapeError(
                        f"{slot.label}: the module's input {tuple(src.shape)} and output "
                        f"{tuple(vals.shape)} differ in shape, so it cannot be skipped"
                    )
            elif src is not None and (src.shape != vals.shape or src.device != vals.device):
                src = _fit_source_repr(src, vals, slot)
            # Straight to forward() unless someone hooked the intervention module itself.
            if iv._forward_hooks or iv._forward_pre_hooks:
                new = iv(vals, src, st.subspaces[i])
            else:
                new = iv.forward(vals, src, st.subspaces[i])
            if not iv.modifies_output:
                st.collected[i] = new
                continue
            if new.shape != vals.shape:
                raise ShapeError(f"{slot.label} returned shape {tuple(new.shape)}; expected {tuple(vals.shape)}")
            # A result autograd records may have saved the gathered view (a rotation saves its
            # input): writing into x in place would change it under autograd's feet.
            ip = inplace and not (new.requires_grad and torch.is_grad_enabled())
            if ip and units.span is not None and not slot.heads and slot.site.columns is None:
                vals.copy_(new)  # vals is a view of x at those positions
                continue
            x = scatter(x, units, slot.site, slot.heads, new, ip)
        return x

    def _write_hook(self, io, members):
        apply = self._apply
        if io == "output":

            def post(m, args, kwargs, output):
                x = output if type(output) is torch.Tensor else output_tensor(output)
                # Write in place unless autograd records x, or x aliases the module's input.
                inplace = not (x.requires_grad and torch.is_grad_enabled()) and not _aliases_input(args, kwargs, x)
                new = apply(members, x, args, kwargs, inplace)
                return None if new is x else replace_output(output, new)

            return post

        def pre(m, args, kwargs):
            # Inputs are written out of place: the tensor may live on elsewhere (a residual).
            x, where = find_input(args, kwargs)
            new = apply(members, x, args, kwargs, False)
            return None if new is x else replace_input(args, kwargs, where, new)

        return pre

    def _read_hook(self, io, key):
        def read(x):
            st = self.state
            items = st.reads.get(key)
            if items is None or key not in st.pending:
                return
            for slot, units in items:
                sel = gather(x, units, slot.site, slot.heads)
                # A view of the activation is copied: the model may still change it in place
                # later in the pass (Falcon adds attention into the MLP output).
                if sel.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                    sel = sel.clone()
                st.acts[slot.index] = sel
            st.pending.discard(key)
            if not st.pending:
                raise StopForward

        if io == "output":
            return lambda m, a, k, o: read(o if type(o) is torch.Tensor else output_tensor(o))
        return lambda m, a, k: read(find_input(a, k)[0])

    # -- passes ---------------------------------------------------------------------------------
    def base_pass(self, model, inputs, st: _CallState, only=None):
        """Run ``inputs`` with the write hooks of the slots that have units in ``st``."""
        with HookSet() as hooks:
            for module, io, fn in self.write_hooks:
                (hooks.post if io == "output" else hooks.pre)(module, fn)
            out = call_model(model, inputs)
        missed = [s for s in (only or self.slots) if st.units[s.index] is not None and not st.fired[s.index]]
        if missed:
            raise ConfigError(
                f"{missed[0].label}: the base pass never reached {missed[0].site.description}; is the "
                f"module used in this model's forward for these inputs?"
            )
        return out

    def source_pass(self, model, inputs, st: _CallState, requests, writes: bool = False) -> dict:
        """Run ``inputs`` keeping the gathered units of ``requests`` [(slot, units)].

        The pass stops right after the last needed site. With ``writes``, the write hooks of
        ``st`` are applied in the same pass (serial mode).
        """
        st.reads = {}
        for slot, units in requests:
            st.reads.setdefault((id(slot.site.module), slot.site.io), []).append((slot, units))
        st.pending = set(st.reads)
        st.acts = {}
        with HookSet() as hooks:
            if writes:
                for module, io, fn in self.write_hooks:
                    (hooks.post if io == "output" else hooks.pre)(module, fn)
            for key in st.reads:
                module, io, fn = self.read_hooks[key]
                (hooks.post if io == "output" else hooks.pre)(module, fn)
            try:
                call_model(model, inputs)
            except StopForward:
                pass
        missing = [slot for slot, _ in requests if slot.index not in st.acts]
        if missing:
            raise ConfigError(
                f"{missing[0].label}: the source pass never reached {missing[0].site.description}; is "
                f"the module used in this model's forward for these inputs?"
            )
        return st.acts

    # -- a call -----------------------------------------------------------------------------------
    def run(self, model, base, sources=None, unit_locations=None, source_representations=None,
            subspaces=None, output_original_output=False):
        prev = self.state
        try:
            return self._run(model, base, sources, unit_locations, source_representations,
                             subspaces, output_original_output)
        finally:
            self.state = prev

    def _run(self, model, base, sources, unit_locations, source_representations, subspaces,
             output_original_output):
        slots = self.slots
        n = len(slots)
        bsz = batch_size(base, "base")
        src_locs, base_locs = normalize_locations(unit_locations, slots, self.mode)
        reprs = normalize_source_representations(source_representations, slots)
        if subspaces is not None:
            if isinstance(subspaces, (list, tuple)) and len(subspaces) != n and n > 1:
                raise LocationError(f"subspaces: got {len(subspaces)} entries for {n} interventions")
            sub_list = _per_slot(subspaces, n, "subspaces")
            for slot, sub in zip(slots, sub_list):
                if sub is not None and not slot.intervention.supports_subspaces:
                    raise ConfigError(
                        f"subspaces: {slot.label} does not take subspaces (it learns its own mask); "
                        f"pass None for it"
                    )
        else:
            sub_list = None

        base_units = [self._units_for(i, base_locs[i], "base", bsz) for i in range(n)]
        original = call_model(model, base) if output_original_output else None
        st = self.state = _CallState(n)
        if sub_list is not None:
            st.subspaces = sub_list

        if self.mode == "serial":
            intervened = self._run_serial(model, base, sources, src_locs, base_units, reprs, bsz, st)
        else:
            has_repr = [r is not None for r in reprs]
            per_slot_src = normalize_sources(sources, slots, has_repr, bsz)
            self._run_sources(model, per_slot_src, src_locs, bsz, st)
            for i, slot in enumerate(slots):
                if st.src[i] is None and reprs[i] is not None and slot.intervention.source_from == "source":
                    st.src[i] = _check_repr(reprs[i], slot)
            st.units = base_units
            intervened = self.base_pass(model, base, st)
        return original, intervened, [st.collected[i] for i in sorted(st.collected)]

    def _run_sources(self, model, per_slot_src, src_locs, bsz, st: _CallState) -> None:
        """Fill ``st.src`` with one pass per distinct source input (by identity, then contents)."""
        slots = self.slots
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
        if not distinct:
            return
        with torch.set_grad_enabled(_model_needs_grad(model)):
            for src, idxs in distinct:
                reqs = [(slots[i], self._units_for(i, src_locs[i], "source", bsz)) for i in idxs]
                acts = self.source_pass(model, src, st, reqs)
                for i in idxs:
                    st.src[i] = acts[i]

    def collect_sources(self, model, sources, unit_locations=None) -> list:
        """The source activations each intervention would read, ``[batch, units, width]`` per slot
        (``None`` for slots that take no source), as ``source_representations`` accepts them."""
        if self.mode == "serial":
            raise ConfigError(
                "collect_source_representations: mode='serial' feeds each intervention from the "
                "previous one's intervened stream, so its sources cannot be computed apart; use "
                "mode='parallel'"
            )
        slots = self.slots
        if sources is None or (isinstance(sources, (list, tuple)) and not sources):
            raise ConfigError("collect_source_representations: sources is empty; give the source inputs")
        first = sources[0] if isinstance(sources, (list, tuple)) else sources
        bsz = batch_size(first, "sources[0]")
        src_locs, _ = normalize_locations(unit_locations, slots, self.mode)
        per_slot_src = normalize_sources(sources, slots, [False] * len(slots), bsz)
        prev = self.state
        try:
            st = self.state = _CallState(len(slots))
            self._run_sources(model, per_slot_src, src_locs, bsz, st)
            return list(st.src)
        finally:
            self.state = prev

    def _units_for(self, i, loc, side, bsz):
        s = self.slots[i]
        # int / None locations recur call after call: their index objects are cached.
        key = (side, loc, bsz) if loc is None or type(loc) is int else None
        units = s.units_cache.get(key) if key is not None else None
        if units is None:
            units = make_units(loc, s.rep.unit, bsz, s.site.n_heads if s.heads else None,
                               f"unit_locations ({side} of {s.label})")
            if key is not None:
                s.units_cache[key] = units
        return units

    def _run_serial(self, model, base, sources, src_locs, base_units, reprs, bsz, st):
        """Intervention i reads stream i and writes into stream i+1 (streams: sources..., base)."""
        slots = self.slots
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
        grad = _model_needs_grad(model)
        acts: dict = {}
        for i in range(n + 1):
            # Only intervention i-1 writes into stream i.
            st.units = [None] * n
            if i > 0:
                st.units[i - 1] = base_units[i - 1]
                prev = slots[i - 1]
                st.src[i - 1] = acts.get(prev.index, reprs[i - 1])
            if i == n:
                return self.base_pass(model, streams[i], st, only=slots[-1:])
            with torch.set_grad_enabled(grad or (torch.is_grad_enabled() and i > 0)):
                acts = dict(self.source_pass(
                    model, streams[i], st, [(slots[i], self._units_for(i, src_locs[i], "source", bsz))], writes=i > 0
                ))
        raise AssertionError("unreachable")  # pragma: no cover


def _model_needs_grad(model) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())


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
