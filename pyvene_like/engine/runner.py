"""The executor: runs a :class:`~.plan.Plan`'s interventions inside the model's own passes.

One hook body serves ``forward`` and ``generate`` (:func:`apply_members`). For every slot of
the hooked ``(module, io)`` group it asks the call's *window* for the slot's values, source
and subspaces, runs the intervention, records a Collect result or checks the new values'
shape, and hands them back to the window to write. A window is the strategy of one kind of
call:

* :class:`ForwardWindow` (``forward``): whole sequences; each slot's units are
  :class:`~.units.Units` index tensors (int positions are a slice, written in place);
* ``generate``'s step window (:mod:`.generate`): the positions one step of the decoding loop
  computes, with the cache length and rows -> examples, selected from per-example tables.

Flow of one ``forward`` call (:meth:`Executor.forward`): the arguments are validated and
normalised (:mod:`.arguments`; recurring location arguments hit a cache), every *distinct*
source input runs once with read hooks that keep only the needed units and stop the pass
right after its last needed site (:class:`~.hooks.StopForward`), then the base runs once with
the write hooks. A call that only wants the Collect results (:meth:`Executor.forward` with
``stop_after_collect``) stops the base pass the same way, right after the last group with a
Collect slot. Hooks are prebuilt once per plan and only registered for the duration of a
pass (:class:`~.hooks.HookSet`); the model is never left modified.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError, LocationError, PyveneLikeError, ShapeError
from .arguments import (
    batch_size,
    check_repr,
    expand_inputs,
    fit_source_repr,
    freeze,
    is_frozen,
    normalize_locations,
    normalize_source_representations,
    normalize_sources,
    normalize_subspaces,
    same_inputs,
)
from .hooks import HookSet, StopForward, find_input, output_tensor, replace_input, replace_output
from .plan import Plan
from .units import Units, as_3d, check_positions, gather, make_units, scatter, step_set


def call_model(model, inputs):
    try:
        if type(inputs) is dict or isinstance(inputs, Mapping):
            return model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return model(*inputs)
        return model(inputs)
    except (IndexError, RuntimeError, ValueError) as e:
        raise_for_inputs(model, inputs, e)
        raise


def raise_for_inputs(model, inputs, error: BaseException) -> None:
    """After the model raised ``error`` on ``inputs``: a ShapeError naming the input at fault
    when it is one we can tell (token ids outside the vocabulary, an attention mask of another
    shape), chained to the model's own error; else return and let the caller re-raise it. Only
    the failing path pays for the checks."""
    if isinstance(error, PyveneLikeError):
        return
    if isinstance(inputs, Mapping):
        ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    else:
        first = inputs[0] if isinstance(inputs, (tuple, list)) and inputs else inputs
        ids, mask = first, None
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool or ids.numel() == 0:
        return
    emb = getattr(model, "get_input_embeddings", None)
    try:
        emb = emb() if callable(emb) else None
    except (NotImplementedError, AttributeError):
        emb = None
    n = getattr(emb, "num_embeddings", None)
    if n is not None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= n:
            raise ShapeError(
                f"input_ids: token id {hi if hi >= n else lo} is outside the model's vocabulary of "
                f"{n} embeddings (accepted: 0..{n - 1}); was the input made by another tokenizer?"
            ) from error
    if isinstance(mask, torch.Tensor) and mask.shape != ids.shape:
        raise ShapeError(
            f"attention_mask: shape {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)} "
            f"(accepted: the same [batch, seq] shape)"
        ) from error


def aliases_input(args, kwargs, x) -> bool:
    """Whether ``x`` (a module's output) shares storage with the module's main input."""
    inp = args[0] if args and type(args[0]) is torch.Tensor else find_input(args, kwargs)[0]
    return inp is not None and inp.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def model_needs_grad(model) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())


def _single_row(units: Units) -> Units | None:
    """``units`` for a batch of 1 when every example of the batch selects the same units
    (``None`` when they differ)."""
    pos, heads = units.pos, units.heads
    if pos is not None and bool((pos != pos[:1]).any()):
        return None
    if heads is not None and bool((heads != heads[:1]).any()):
        return None
    return Units(None if pos is None else pos[:1], None if heads is None else heads[:1],
                 units.pos_lo, units.pos_hi, units.label, 1, units.span)


def _stop_hook(pending: set, key):
    """A hook that ends the pass (:class:`~.hooks.StopForward`) once every key of ``pending`` ran."""

    def stop(*_):
        pending.discard(key)
        if not pending:
            raise StopForward

    return stop


# -- the hook body ------------------------------------------------------------------------------
def apply_members(members, window, x, args, kwargs, inplace: bool):
    """gather -> intervention -> record (Collect) or check shape -> scatter, for each slot of
    one ``(module, io)`` group, in config order. Returns the tensor the module passes on."""
    for slot in members:
        sel = window.select(slot, x, args, kwargs)
        if sel is None:  # nothing of this slot in the window
            continue
        vals, src, subs, where = sel
        iv = slot.intervention
        # Straight to forward() unless someone hooked the intervention module itself.
        if iv._forward_hooks or iv._forward_pre_hooks:
            new = iv(vals, src, subs)
        else:
            new = iv.forward(vals, src, subs)
        if (new is None and not iv.modifies_output) or new is not None and (
                not isinstance(new, torch.Tensor) or (new.dtype != vals.dtype and not new.dtype.is_floating_point)):
            got = "None" if new is None else type(new).__name__ if not isinstance(new, torch.Tensor) else f"a {new.dtype} tensor"
            raise ShapeError(
                f"{slot.label} returned {got}; expected a floating-point tensor of shape "
                f"{tuple(vals.shape)}" + (" (the values it collects)" if not iv.modifies_output else
                                          " or None (no change)")
                + "; integer, bool and complex results are not cast silently"
            )
        if not iv.modifies_output:
            if new.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                # A view of the activation (Collect returns its input): copy the units, so the
                # whole activation is not kept alive and a later in-place change by the model
                # (Falcon adds attention into the MLP output) does not reach the result.
                new = new.clone()
            window.record(slot, new, where)
            continue
        if new is None:  # a function intervention that only looked (pyvene's convention)
            continue
        if new.shape != vals.shape:
            raise ShapeError(f"{slot.label} returned shape {tuple(new.shape)}; expected {tuple(vals.shape)}")
        x, inplace = window.write(slot, x, vals, new, where, inplace)
    return x


class ForwardWindow:
    """The window of a ``forward`` pass: every position of the sequences.

    Per slot (indexed by ``slot.index``): its :class:`~.units.Units` (``None``: not active in
    this pass), source values, subspaces; which slots fired; the Collect results.
    """

    __slots__ = ("units", "src", "subspaces", "fired", "collected", "calls")

    def __init__(self, n: int, subspaces=None):
        self.units = [None] * n
        self.src = [None] * n
        self.subspaces = subspaces if subspaces is not None else [None] * n
        self.fired = [False] * n
        self.collected: dict = {}
        self.calls: dict = {}  # unit "t" slots: calls of the module seen so far in this pass

    def _step(self, slot, units, x):
        """Unit ``"t"``: this call of the module is time step ``c``; the whole activation
        ``[batch, width]`` when ``c`` is one of the slot's steps, else None."""
        i = slot.index
        c = self.calls.get(i, 0)
        self.calls[i] = c + 1
        if not units.everything and c not in step_set(units):
            return None
        return Units(label=units.label, bsz=x.shape[0])

    def unreached_steps(self, slots):
        """(slot, step) for a unit ``"t"`` slot whose step the pass never reached, else None."""
        for slot in slots:
            units = self.units[slot.index]
            if slot.steps and units is not None and not units.everything:
                last = max(step_set(units))
                if last >= self.calls.get(slot.index, 0):
                    return slot, last
        return None

    def select(self, slot, x, args, kwargs):
        i = slot.index
        units = self.units[i]
        if units is None:  # not active in this pass (serial mode)
            return None
        self.fired[i] = True
        if slot.steps:
            units = self._step(slot, units, x)
            if units is None:
                return None
        span = units.span
        if span is not None and slot.plain:
            # Positions shared by the whole batch on a whole-width site: a view of x.
            xs = x if x.dim() == 3 else as_3d(x, units.bsz)
            seq = xs.shape[1]
            if units.pos_hi >= seq or units.pos_lo < -seq:
                check_positions(units, seq)  # raises
            start = span[0] if span[0] >= 0 else seq + span[0]
            vals = xs.narrow(1, start, span[1])
        else:
            vals = gather(x, units, slot.site, slot.heads)
        src = self.src[i]
        if slot.intervention.source_from == "module_input":
            src = gather(find_input(args, kwargs)[0], units, slot.site, slot.heads)
            if src.shape != vals.shape:
                raise ShapeError(
                    f"{slot.label}: the module's input {tuple(src.shape)} and output "
                    f"{tuple(vals.shape)} differ in shape, so it cannot be skipped"
                )
        elif src is not None and (src.shape != vals.shape or src.device != vals.device):
            src = fit_source_repr(src, vals, slot)
        sub = self.subspaces[i]
        if (isinstance(sub, (list, tuple)) and sub and isinstance(sub[0], (list, tuple, torch.Tensor))
                and len(sub) != vals.shape[0]):
            # Inside a model, lists are per example; per-unit lists are for direct calls only.
            raise LocationError(
                f"subspaces: got {len(sub)} per-example lists for {slot.label} on a batch of "
                f"{vals.shape[0]} (accepted: [ids] for every example, [batch][ids] or "
                f"[batch][units][ids])"
            )
        return vals, src, sub, units

    def record(self, slot, new, units) -> None:
        prev = self.collected.get(slot.index) if slot.steps else None
        # Unit "t": one entry per step, in step order.
        self.collected[slot.index] = new if prev is None else torch.cat([prev, new], dim=1)

    def write(self, slot, x, vals, new, units, inplace: bool):
        # A result autograd records may have saved the gathered view (a rotation saves its
        # input): writing into x in place would change it under autograd's feet.
        ip = inplace and not (new.requires_grad and torch.is_grad_enabled())
        if ip and units.span is not None and slot.plain:
            vals.copy_(new)  # vals is a view of x at those positions
            return x, inplace
        return scatter(x, units, slot.site, slot.heads, new, ip), inplace

    def collected_list(self) -> list:
        c = self.collected
        return [c[i] for i in sorted(c)] if c else []


class _Reads:
    """What a source pass keeps: ``(module id, io) -> [(slot, units)]``, the groups still to
    reach, and the gathered values by slot index."""

    __slots__ = ("items", "pending", "acts")

    def __init__(self, requests):
        items: dict = {}
        for slot, units in requests:
            items.setdefault((id(slot.site.module), slot.site.io), []).append((slot, units))
        self.items = items
        self.pending = set(items)
        self.acts: dict = {}


class _CallArgs:
    """A call's normalised locations and their units, cached per recurring argument value."""

    __slots__ = ("src_locs", "base_locs", "base_units", "src_units")

    def __init__(self, src_locs, base_locs):
        self.src_locs = src_locs
        self.base_locs = base_locs
        self.base_units = None
        self.src_units: dict = {}


def _thaw(value):
    """A private copy of a location argument (so a cached entry never aliases a list
    the caller may change later)."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_thaw(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_thaw(v) for v in value)
    return value


_CACHE_SIZE = 64


class Executor:
    """Drives a :class:`~.plan.Plan`: the prebuilt hooks, the window of the call under way,
    source passes and base passes. ``forward`` and ``generate`` both run through it.

    The hooks are built once, here, one per ``(module, io)`` group; they read the call's
    window from ``self.window`` (and a source pass's requests from ``self.reads``), so a call
    only registers them, runs, and removes them.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.slots = plan.slots
        self.mode = plan.mode
        self.window = None
        self.reads: _Reads | None = None
        self._args_cache: dict = {}
        self.write_hooks = [(module, io, self._write_hook(io, members)) for module, io, members in plan.groups]
        self.read_hooks = {
            (id(module), io): (module, io, self._read_hook(io, (id(module), io))) for module, io, _ in plan.groups
        }

    # -- hooks ------------------------------------------------------------------------------------
    def _write_hook(self, io, members):
        ex = self
        if io == "output":

            def post(m, args, kwargs, output):
                x = output if type(output) is torch.Tensor else output_tensor(output)
                # Write in place unless autograd records x, or x aliases the module's input.
                inplace = not (x.requires_grad and torch.is_grad_enabled()) and not aliases_input(args, kwargs, x)
                new = apply_members(members, ex.window, x, args, kwargs, inplace)
                return None if new is x else replace_output(output, new)

            return post

        def pre(m, args, kwargs):
            # Inputs are written out of place: the tensor may live on elsewhere (a residual).
            x, where = find_input(args, kwargs)
            new = apply_members(members, ex.window, x, args, kwargs, False)
            return None if new is x else replace_input(args, kwargs, where, new)

        return pre

    def _read_hook(self, io, key):
        ex = self

        def read(x):
            rd = ex.reads
            if rd is None or key not in rd.pending:
                return
            for slot, units in rd.items[key]:
                sel = gather(x, units, slot.site, slot.heads)
                # A view of the activation is copied: the model may still change it in place
                # later in the pass (Falcon adds attention into the MLP output).
                if sel.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                    sel = sel.clone()
                rd.acts[slot.index] = sel
            rd.pending.discard(key)
            if not rd.pending:
                raise StopForward

        if io == "output":
            return lambda m, a, k, o: read(o if type(o) is torch.Tensor else output_tensor(o))
        return lambda m, a, k: read(find_input(a, k)[0])

    def install_writes(self, hooks: HookSet) -> None:
        """Register the write hooks of every group in ``hooks`` (they act through ``self.window``)."""
        for module, io, fn in self.write_hooks:
            (hooks.post if io == "output" else hooks.pre)(module, fn)

    # -- passes -------------------------------------------------------------------------------------
    def base_pass(self, model, inputs, window: ForwardWindow, only=None, stop_after=None):
        """Run ``inputs`` with the write hooks of the slots that have units in ``window``.

        ``stop_after``: ``(module, io)`` groups; the pass stops right after the last of them ran
        (its write hook included) and returns ``None`` instead of the model's output.
        """
        self.window = window
        with HookSet() as hooks:
            for module, io, fn in self.write_hooks:
                (hooks.post if io == "output" else hooks.pre)(module, fn)
            if stop_after:
                # Registered after the write hooks, so they run after them on the same module.
                pending = {(id(m), io) for m, io in stop_after}
                for module, io in stop_after:
                    fn = _stop_hook(pending, (id(module), io))
                    (hooks.post if io == "output" else hooks.pre)(module, fn)
                try:
                    out = call_model(model, inputs)  # not stopped: a Collect site the pass never reached
                except StopForward:
                    return None
            else:
                out = call_model(model, inputs)
        units, fired = window.units, window.fired
        missed = [s for s in (only or self.slots) if units[s.index] is not None and not fired[s.index]]
        if missed:
            raise ConfigError(
                f"{missed[0].label}: the base pass never reached {missed[0].site.description}; is the "
                f"module used in this model's forward for these inputs?"
            )
        if self.plan.has_steps:
            late = window.unreached_steps(only or self.slots)
            if late is not None:
                slot, step = late
                raise LocationError(
                    f"unit_locations (base of {slot.label}): time step {step} is out of range; "
                    f"{slot.site.description} ran {window.calls.get(slot.index, 0)} times in this pass"
                )
        return out

    def source_pass(self, model, inputs, requests, window: ForwardWindow | None = None) -> dict:
        """Run ``inputs`` keeping the gathered units of ``requests`` [(slot, units)].

        The pass stops right after the last needed site. With a ``window``, its write hooks are
        applied in the same pass (serial mode).
        """
        rd = self.reads = _Reads(requests)
        with HookSet() as hooks:
            if window is not None:
                self.window = window
                self.install_writes(hooks)
            for key in rd.items:
                module, io, fn = self.read_hooks[key]
                (hooks.post if io == "output" else hooks.pre)(module, fn)
            try:
                call_model(model, inputs)
            except StopForward:
                pass
        acts = rd.acts
        missing = [slot for slot, _ in requests if slot.index not in acts]
        if missing:
            raise ConfigError(
                f"{missing[0].label}: the source pass never reached {missing[0].site.description}; is "
                f"the module used in this model's forward for these inputs?"
            )
        return acts

    def run_sources(self, model, per_slot_src, src_locs, bsz: int, units_of=None) -> list:
        """Source values per slot (``None`` where the slot has no source input), with one pass
        per distinct source input (the same object, or equal contents)."""
        slots = self.slots
        out = [None] * len(slots)
        distinct: list = []
        for i, src in enumerate(per_slot_src):
            if src is None:
                continue
            for entry in distinct:
                if same_inputs(entry[0], src):
                    entry[1].append(i)
                    break
            else:
                distinct.append((src, [i]))
        if not distinct:
            return out
        units_of = units_of or (lambda i: self.units_for(i, src_locs[i], "source", bsz))
        prev = self.reads
        grad = model_needs_grad(model)
        try:
            if grad == torch.is_grad_enabled():
                self._source_passes(model, distinct, units_of, out, bsz)
            else:
                with torch.set_grad_enabled(grad):
                    self._source_passes(model, distinct, units_of, out, bsz)
        finally:
            self.reads = prev
        return out

    def _source_passes(self, model, distinct, units_of, out, bsz: int | None = None) -> None:
        slots = self.slots
        for src, idxs in distinct:
            requests = [(slots[i], units_of(i)) for i in idxs]
            if bsz is not None and bsz > 1 and batch_size(src, "sources") == 1:
                # One source for a batch of bases: when every example reads the same units, the
                # pass runs at batch 1 and its [1, units, width] values broadcast in the base
                # pass; otherwise the source is seen (as views) as a batch of bsz.
                single = [_single_row(u) for _, u in requests]
                if all(u is not None for u in single):
                    requests = [(slot, u) for (slot, _), u in zip(requests, single)]
                else:
                    src = expand_inputs(src, bsz)
            acts = self.source_pass(model, src, requests)
            for i in idxs:
                out[i] = acts[i]

    def units_for(self, i: int, loc, side: str, bsz: int):
        """Slot ``i``'s :class:`~.units.Units` for a raw location on one side of a call."""
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

    def call_args(self, unit_locations, bsz: int) -> _CallArgs:
        """Validated, normalised locations of a call, cached when they are made of ints,
        ``None``, lists, tuples and dicts (the usual case: the same shape call after call)."""
        key = freeze(unit_locations)
        cacheable = is_frozen(key)
        if cacheable:
            key = (key, bsz)
            hit = self._args_cache.get(key)
            if hit is not None:
                return hit
            unit_locations = _thaw(unit_locations)
        entry = _CallArgs(*normalize_locations(unit_locations, self.slots, self.mode))
        if cacheable:
            if len(self._args_cache) >= _CACHE_SIZE:
                self._args_cache.clear()
            self._args_cache[key] = entry
        return entry

    # -- calls ----------------------------------------------------------------------------------
    def forward(self, model, base, sources=None, unit_locations=None, source_representations=None,
                subspaces=None, output_original_output=False, stop_after_collect=False):
        """One intervened forward: ``(original or None, intervened, collected list)``.

        ``stop_after_collect``: only the Collect results are wanted; the base pass stops right
        after the last site a Collect slot reads and ``intervened`` is ``None`` (in parallel
        mode without unit ``"t"`` slots; otherwise the pass runs to the end).
        """
        prev_w, prev_r = self.window, self.reads
        try:
            return self._forward(model, base, sources, unit_locations, source_representations,
                                 subspaces, output_original_output, stop_after_collect)
        finally:
            self.window, self.reads = prev_w, prev_r

    def _forward(self, model, base, sources, unit_locations, source_representations, subspaces,
                 output_original_output, stop_after_collect=False):
        slots = self.slots
        n = len(slots)
        bsz = batch_size(base, "base")
        args = self.call_args(unit_locations, bsz)
        reprs = normalize_source_representations(source_representations, slots)
        sub_list = normalize_subspaces(subspaces, slots)
        base_units = args.base_units
        if base_units is None:
            base_units = args.base_units = [self.units_for(i, args.base_locs[i], "base", bsz) for i in range(n)]
        original = call_model(model, base) if output_original_output else None
        win = ForwardWindow(n, sub_list)

        if self.mode == "serial":
            intervened = self._run_serial(model, base, sources, args, base_units, reprs, bsz, win)
        else:
            per_slot_src = normalize_sources(sources, slots, [r is not None for r in reprs], bsz, skip_none=True,
                                             base_only=unit_locations is None)
            if self.plan.has_steps:
                bad = next((s for s, src_in in zip(slots, per_slot_src) if s.steps and src_in is not None), None)
                if bad is not None:
                    raise ConfigError(
                        f"{bad.label}: unit 't' takes no source run; give source_representations, or use "
                        f"an intervention that needs no source"
                    )
            src = win.src
            if any(s is not None for s in per_slot_src):
                src[:] = self.run_sources(model, per_slot_src, args.src_locs, bsz,
                                          lambda i: self._source_units(args, i, bsz))
            skipped = None
            for i, slot in enumerate(slots):
                if src[i] is None and slot.intervention.source_from == "source":
                    if reprs[i] is not None:
                        src[i] = check_repr(reprs[i], slot)
                    else:  # no source given for it (a None entry, or a base-only call): skipped
                        skipped = skipped or list(base_units)
                        skipped[i] = None
            win.units = base_units if skipped is None else skipped
            stop = None
            if stop_after_collect and not self.plan.has_steps:
                stop = [(m, io) for m, io, members in self.plan.groups
                        if any(win.units[s.index] is not None and not s.intervention.modifies_output
                               for s in members)]
            intervened = self.base_pass(model, base, win, stop_after=stop)
        return original, intervened, win.collected_list()

    def _source_units(self, args: _CallArgs, i: int, bsz: int):
        units = args.src_units.get(i)
        if units is None:
            units = args.src_units[i] = self.units_for(i, args.src_locs[i], "source", bsz)
        return units

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
        return self.run_sources(model, per_slot_src, src_locs, bsz)

    def _run_serial(self, model, base, sources, args: _CallArgs, base_units, reprs, bsz, win):
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
            if b == 1 and bsz > 1:  # one source for every example: seen (as views) as a batch
                streams[j] = expand_inputs(s, bsz)
            elif b != bsz:
                raise ShapeError(
                    f"sources[{j}] has batch size {b} but base has {bsz}; give one source per base "
                    f"example, or a batch of 1 for every example"
                )
        grad = model_needs_grad(model)
        acts: dict = {}
        for i in range(n + 1):
            # Only intervention i-1 writes into stream i.
            win.units = [None] * n
            if i > 0:
                win.units[i - 1] = base_units[i - 1]
                prev = slots[i - 1]
                win.src[i - 1] = acts.get(prev.index, reprs[i - 1])
            if i == n:
                return self.base_pass(model, streams[i], win, only=slots[-1:])
            with torch.set_grad_enabled(grad or (torch.is_grad_enabled() and i > 0)):
                acts = dict(self.source_pass(
                    model, streams[i], [(slots[i], self._source_units(args, i, bsz))],
                    window=win if i > 0 else None,
                ))
        raise AssertionError("unreachable")  # pragma: no cover
