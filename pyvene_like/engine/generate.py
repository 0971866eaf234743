"""``IntervenableModel.generate``: interventions during HuggingFace ``generate``, KV-cache correct.

The executor (:mod:`.runner`) runs these interventions with the same hook body as
``forward``; this module gives it a :class:`StepWindow` (the positions each decoding step
computes) instead of whole sequences, and plans where each intervention acts.

Positions
---------
Every position is **absolute and per example**: position ``p`` of example ``b`` is its
``p``-th real token, counted from its first non-pad token (left padding is read from
``attention_mask``), across the prompt and then the generated tokens. With ``L_b`` prompt
tokens, generated token ``t`` (``t = 0`` is the first one) sits at position ``L_b + t``.
"Position 7" therefore names the same token with or without the KV cache, whatever the
padding, whichever step of the loop computes it.

What is intervened
------------------
The positions an intervention changes (or, for Collect, reads) in example ``b`` are the
union of two sets, each applied once:

* **prompt positions** (``intervene_on_prompt=True``): the positions of ``unit_locations``
  (the base side), as in ``forward``: ints or ``[batch][units]`` lists, negative ones counted
  from the end of the example's prompt; ``None`` means every prompt position. A position
  past the prompt is an error: generated tokens are named by ``timesteps``.
* **generated tokens** (``timesteps``): intervening *on generated token t* changes the
  activations at position ``L_b - 1 + t``, the position whose output predicts token ``t``.
  So token ``t`` is the first token the change can affect, and ``timesteps=0`` (or
  ``"all"``) steers the very first generated token through the last prompt position;
  ``timesteps="all"`` covers every one of the ``max_new_tokens`` tokens. pyvene's
  generation (``intervene_on_prompt=False``, location 0 of each new-token step) equals
  ``timesteps=range(1, max_new_tokens)`` here: it never reaches token 0.

``intervene_on_prompt=True, timesteps=None`` (the default) intervenes on the prompt only;
``intervene_on_prompt=False, timesteps="all"`` on every generated token only; both give
every position the model ever computes (``0 .. L_b + max_new_tokens - 2``: the last
generated token is never fed back). When a prompt position and a timestep name the same
position (``L_b - 1`` and timestep 0), it is intervened once, with the prompt entry's source.

Head units (``"h"``, ``"h.pos"``) take their heads from ``unit_locations`` and apply them at
every intervened position of that example.

Sources
-------
Each distinct source input runs once, before generation, keeping the units named by the
source side of ``unit_locations`` (positions per example as above, for left-padded sources
too); ``source_representations`` skip that pass. A source gives either **one** position
(used at every intervened position: the usual steering vector or patched state) or exactly
as many positions as the example's prompt positions (paired in order). Generated tokens
always take a one-position source.

Each forward step of ``generate`` sees a window of positions (with the cache only the new
tokens, without it the whole sequence). The engine selects the (row, position) pairs of
the window to intervene on as a flat pseudo-batch ``[pairs, units, width]``, each pair
with its example's source, heads and subspaces, runs the intervention and scatters the
result back; a window where every row is intervened at every position with a one-position
source is handled as one ``[rows, window, width]`` block instead. Rows of
``num_return_sequences`` and beams map to examples by integer division (``row // k``).
Without the cache, positions computed in an earlier step are recomputed, and intervened
again the same way, so greedy decoding gives the same tokens with and without the cache for
any intervention that is a function of its inputs at one position (every registered one
but unseeded noise).

Collected activations
---------------------
For each Collect intervention (config order), a tensor ``[rows, J, width]`` (head units:
``[rows, heads * J, head_dim]``, head-major as in ``forward``), one row per output sequence,
with the ``J`` entries: first the prompt positions in ``unit_locations`` order (``None``: the
example's prompt positions ``0 .. L_b - 1``), then the timesteps in increasing order (entry
of timestep ``t``: the activation at position ``L_b - 1 + t``). Each position is recorded
the first time it is computed. Entries that were never computed are NaN: a shorter prompt
than the longest in the batch, or generation stopping (every row reached EOS) before that
timestep. Collect is refused with beam search, whose rows swap hypotheses between steps.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError, LocationError, ShapeError
from ..validation import check_positive_int, is_int
from .arguments import (
    batch_size,
    check_repr,
    expand_inputs,
    normalize_locations,
    normalize_source_representations,
    normalize_sources,
    normalize_subspaces,
)
from .hooks import HookSet, find_input
from .outputs import shape_outputs
from .runner import Executor, raise_for_inputs
from .units import as_3d, make_units

_TIMESTEP_WORDS = ("all",)


# -- argument normalisation -----------------------------------------------------------------
def _left_pads(mask: torch.Tensor | None, bsz: int, length: int, label: str) -> list[int]:
    """Pad count per example of a left-padded ``attention_mask`` (all zeros when absent)."""
    if mask is None:
        return [0] * bsz
    if mask.dim() != 2 or tuple(mask.shape) != (bsz, length):
        raise ShapeError(
            f"{label}: attention_mask has shape {tuple(mask.shape)}; expected [batch={bsz}, "
            f"length={length}] like input_ids"
        )
    m = mask.detach().to("cpu")
    if m.dtype.is_complex or not bool(((m == 0) | (m == 1)).all()):
        bad = sorted({v for v in m.flatten().tolist() if v not in (0, 1)})[:5]
        raise ShapeError(
            f"{label}: attention_mask holds {bad}; accepted: 0 (padding) and 1 (a token) only"
        )
    m = m.to(torch.long)
    pads = (length - m.sum(1)).tolist()
    # Left padding: zeros first, then ones only.
    expected = torch.arange(length).unsqueeze(0) >= torch.tensor(pads).unsqueeze(1)
    bad = (m.bool() != expected).any(1).nonzero().flatten().tolist()
    if bad:
        raise ShapeError(
            f"{label}: example {bad[0]}'s attention_mask {m[bad[0]].tolist()} is not left-padded; "
            f"generation needs pads before the tokens (tokenizer.padding_side = 'left')"
        )
    if any(p >= length for p in pads):
        raise ShapeError(f"{label}: example {pads.index(length)} has no token (its attention_mask is all zero)")
    return pads


def _as_inputs(base, label: str) -> dict:
    if isinstance(base, torch.Tensor):
        return {"input_ids": base}
    if isinstance(base, Mapping):
        if not isinstance(base.get("input_ids"), torch.Tensor):
            raise ShapeError(
                f"{label}: generate needs input_ids (a [batch, length] tensor, e.g. a tokenizer's "
                f"output); got keys {sorted(base)}"
            )
        return dict(base)
    raise ShapeError(f"{label}: expected a tensor of token ids or a dict with input_ids, got {type(base).__name__}")


def _max_new_tokens(model, prompt_len: int, kwargs: dict) -> int:
    gc = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    n = kwargs.get("max_new_tokens", getattr(gc, "max_new_tokens", None))
    if n is None:
        max_length = kwargs.get("max_length", getattr(gc, "max_length", None))
        if max_length is None:
            raise ConfigError("generate: give max_new_tokens (how many tokens to generate)")
        n = max_length - prompt_len
    if not is_int(n) or n < 1:
        raise ConfigError(
            f"generate: max_new_tokens must be a positive int (max_length must exceed the prompt "
            f"length {prompt_len}), got {n!r}"
        )
    return int(n)


def _position_limit(model) -> int | None:
    """How many positions the model's config says it can embed (``None``: it does not say)."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, name, None)
        if is_int(value) and value > 0:
            return int(value)
    return None


def _timesteps(timesteps, n_new: int) -> list[int]:
    """``None | 'all' | int | iterable of ints`` -> sorted distinct timesteps in ``0..n_new-1``."""
    if timesteps is None:
        return []
    if isinstance(timesteps, str):
        if timesteps not in _TIMESTEP_WORDS:
            raise LocationError(
                f"timesteps: {timesteps!r} is not accepted; give 'all', None, an int or a list of "
                f"generated-token indices (0 is the first generated token)"
            )
        return list(range(n_new))
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.flatten().tolist()
    items = [timesteps] if isinstance(timesteps, int) and not isinstance(timesteps, bool) else timesteps
    try:
        items = list(items)
    except TypeError:
        items = None
    if items is None or not items or any(isinstance(t, bool) or not isinstance(t, int) for t in items):
        raise LocationError(
            f"timesteps: expected 'all', None, an int or a non-empty list of ints, got {timesteps!r}"
        )
    out = set()
    for t in items:
        if not -n_new <= t < n_new:
            raise LocationError(
                f"timesteps: timestep {t} is past max_new_tokens={n_new} (accepted: 0..{n_new - 1}, "
                f"or negative from the last generated token)"
            )
        out.add(t % n_new)
    return sorted(out)


def _positions(units, bsz: int) -> list | None:
    """Per-example position lists of a :class:`Units` (``None``: every position)."""
    if units.span is not None:
        return [[units.pos_lo]] * bsz
    if units.pos is not None:
        return units.pos.tolist()
    return None


def _shift_source_locations(loc, unit: str, pads: list[int], label: str):
    """Source positions counted per example in a left-padded source -> tensor columns."""
    if not any(pads):
        return loc
    bsz = len(pads)

    def shift(pos):
        if pos is None:
            raise LocationError(
                f"{label}: every position (None) of a left-padded source would read its pad tokens; "
                f"give the source positions explicitly"
            )
        units = make_units(pos, "pos", bsz, None, label)
        rows = _positions(units, bsz)
        return [[p + pads[b] if p >= 0 else p for p in row] for b, row in enumerate(rows)]

    if unit == "pos":
        return shift(loc)
    if unit == "h.pos":
        if not (isinstance(loc, (list, tuple)) and len(loc) == 2):
            return loc  # make_units reports the malformed pair
        return (loc[0], shift(loc[1]))
    return shift(None)  # unit 'h' reads every position, pads included


# -- the compiled schedule of one intervention ------------------------------------------------
class _Schedule:
    """Where one intervention acts, as ``[examples, columns]`` tables of the padded sequence."""

    __slots__ = (
        "slot", "iv", "site", "collect", "needs_src", "from_input", "heads", "n_units", "src",
        "sel", "srcpos", "any_pre", "full_pre", "fast", "layout", "subs", "subs_per_example",
        "rows", "row_ex", "sel_rows", "srcpos_rows", "src_rows", "src_dev", "cols", "subs_rows",
        "buf", "fired", "width",
    )

    def __init__(self, slot):
        self.slot = slot
        self.iv = slot.intervention
        self.site = slot.site
        self.collect = not self.iv.modifies_output
        self.needs_src = self.iv.source_from == "source"
        self.from_input = self.iv.source_from == "module_input"
        self.rows = None
        self.buf = None
        self.fired = False


def _build_schedule(slot, base_loc, src_t, subs, intervene_on_prompt, steps, lengths, pads, n_cols):
    sc = _Schedule(slot)
    bsz = len(lengths)
    label = f"unit_locations (base of {slot.label})"
    units = make_units(base_loc, slot.rep.unit, bsz, slot.site.n_heads if slot.heads else None, label)
    positions = _positions(units, bsz)
    if slot.heads:
        heads = units.heads if units.heads is not None else torch.arange(slot.site.n_heads).expand(bsz, -1)
        sc.heads = heads
        sc.n_units = heads.shape[1]
    else:
        sc.heads = None
        sc.n_units = 1
    if intervene_on_prompt:
        if positions is None:
            prompt = [list(range(n)) for n in lengths]
        else:
            prompt = []
            for b, row in enumerate(positions):
                n = lengths[b]
                resolved = []
                for p in row:
                    if not -n <= p < n:
                        raise LocationError(
                            f"{label}: position {p} is past the prompt of example {b} (length {n}; "
                            f"accepted: 0..{n - 1}, or negative from its end); intervene_on_prompt "
                            f"covers prompt positions, generated tokens are named by timesteps="
                        )
                    p %= n
                    if p in resolved:
                        raise LocationError(f"{label}: position {p} appears twice for example {b}")
                    resolved.append(p)
                prompt.append(resolved)
    else:
        if positions is not None:
            raise LocationError(
                f"{label}: base positions {base_loc!r} are given but intervene_on_prompt=False; "
                f"generated tokens are chosen by timesteps=, so leave the base positions None "
                f"(e.g. {{'sources->base': (source_positions, None)}})"
            )
        prompt = [[] for _ in lengths]

    # Sources: [examples, units, width] -> per position of a source, ``src_pos`` units.
    src_pos = 1
    if sc.needs_src:
        if src_t.dim() == 1:
            src_t = src_t.view(1, 1, -1)
        elif src_t.dim() == 2:
            src_t = src_t.unsqueeze(0)
        if src_t.dim() != 3 or src_t.shape[0] not in (1, bsz):
            raise ShapeError(
                f"source_representations for {slot.label}: shape {tuple(src_t.shape)}; accepted: "
                f"[width], [units, width] or [batch={bsz}, units, width]"
            )
        src_t = src_t.expand(bsz, -1, -1)
        if src_t.shape[1] % sc.n_units:
            raise ShapeError(
                f"{slot.label}: the source has {src_t.shape[1]} units, not a multiple of the "
                f"{sc.n_units} heads intervened on"
            )
        src_pos = src_t.shape[1] // sc.n_units
        for b, row in enumerate(prompt):
            if src_pos not in (1, len(row)) and row:
                raise ShapeError(
                    f"{slot.label}: the source gives {src_pos} positions but example {b} is intervened "
                    f"on at {len(row)} prompt positions; give one source position (used everywhere) "
                    f"or one per prompt position"
                )
        if steps and src_pos != 1:
            raise ShapeError(
                f"{slot.label}: generated tokens (timesteps) take one source position, used at every "
                f"token, but the source gives {src_pos}; select one source position in unit_locations"
            )
    sc.src = src_t

    # Built as Python lists, then one tensor each (per-element tensor writes are slow).
    n_prompt = max((len(r) for r in prompt), default=0)
    sel = [[False] * n_cols for _ in range(bsz)]
    srcpos = [[0] * n_cols for _ in range(bsz)]
    layout = []  # entry j of example b -> its column; n_cols (a NaN column) when never computed
    for b, row in enumerate(prompt):
        pad, n = pads[b], lengths[b]
        sel_b, src_b = sel[b], srcpos[b]
        for i, p in enumerate(row):
            sel_b[pad + p] = True
            src_b[pad + p] = i if src_pos > 1 else 0
        # Generated token t is predicted at column pad + n - 1 + t; a prompt entry at the same
        # column keeps its source.
        step_cols = [pad + n - 1 + t for t in steps]
        for c in step_cols:
            sel_b[c] = True
        layout.append([pad + p for p in row] + [n_cols] * (n_prompt - len(row)) + step_cols)
    sc.sel = torch.tensor(sel, dtype=torch.bool)
    sc.srcpos = torch.tensor(srcpos, dtype=torch.long)
    sc.layout = torch.tensor(layout, dtype=torch.long).view(bsz, n_prompt + len(steps))
    sc.any_pre = [0]
    sc.full_pre = [0]
    for col in zip(*sel):
        sc.any_pre.append(sc.any_pre[-1] + any(col))
        sc.full_pre.append(sc.full_pre[-1] + all(col))
    sc.fast = not slot.heads and slot.site.columns is None and src_pos == 1

    if subs is None:
        sc.subs, sc.subs_per_example = None, False
    else:
        if isinstance(subs, torch.Tensor):
            subs = subs.tolist()
        if is_int(subs) or (isinstance(subs, (list, tuple)) and all(is_int(s) for s in subs)):
            sc.subs, sc.subs_per_example = subs, False  # the same subspaces for every example
        elif isinstance(subs, (list, tuple)) and len(subs) == bsz:
            sc.subs, sc.subs_per_example = list(subs), True
        else:
            raise LocationError(
                f"subspaces for {slot.label}: expected a list of ids or one list per example "
                f"({bsz}), got {subs!r}"
            )
    return sc


def _bind_rows(sc: _Schedule, rows: int, x: torch.Tensor) -> None:
    """Per-row tables (rows = examples x return sequences / beams), on the activation's device."""
    bsz = sc.sel.shape[0]
    if rows % bsz:
        raise ShapeError(
            f"{sc.slot.label}: generate ran {rows} rows for {bsz} examples; rows must be a multiple "
            f"of the batch (num_return_sequences / num_beams)"
        )
    k = rows // bsz
    dev = x.device
    row_ex = torch.arange(rows, device=dev) // k
    sc.rows = rows
    sc.row_ex = row_ex
    sc.sel_rows = sc.sel.to(dev)[row_ex]
    sc.srcpos_rows = sc.srcpos.to(dev)[row_ex]
    if sc.needs_src:
        src = sc.src.to(device=dev, dtype=x.dtype)
        sc.src_dev = src
        sc.src_rows = src[row_ex][:, :1]  # fast path: one source position
    site = sc.site
    cols = None
    if sc.heads is not None:
        hd = site.head_dim
        cols = (sc.heads.unsqueeze(-1) * hd + torch.arange(hd)).reshape(bsz, -1).to(dev)
        base_cols = site.columns_on(dev)
        if base_cols is not None:
            cols = base_cols[cols]
    elif site.columns is not None:
        cols = site.columns_on(dev).expand(bsz, -1)
    sc.cols = cols
    if sc.subs_per_example:
        sc.subs_rows = [sc.subs[r // k] for r in range(rows)]
    else:
        sc.subs_rows = sc.subs


class StepWindow:
    """The window of the ``generate`` step under way: columns ``c0..c1-1`` of the padded
    sequence (``c0`` is the cache length), first never-computed column ``new``, ``rows`` the
    step's batch rows (examples x return sequences / beams). ``schedules[i]`` holds slot
    ``i``'s per-example tables (:class:`_Schedule`)."""

    __slots__ = ("c0", "c1", "new", "seen", "rows", "n_cols", "schedules")

    def __init__(self, n_cols, schedules):
        self.c0 = self.c1 = self.new = self.seen = self.rows = 0
        self.n_cols = n_cols
        self.schedules = schedules

    def _xs(self, slot, x):
        xs = as_3d(x, self.rows)
        n = self.c1 - self.c0
        if xs.shape[1] != n:
            raise ShapeError(
                f"{slot.label}: the activation at {slot.site.description} has {xs.shape[1]} "
                f"positions but this generation step computes {n}"
            )
        return xs

    def select(self, slot, x, args, kwargs):
        sc = self.schedules[slot.index]
        c0, c1 = self.c0, self.c1
        if sc.any_pre[c1] == sc.any_pre[c0]:
            return None  # nothing of this intervention in the window
        sc.fired = True
        xs = self._xs(slot, x)
        if sc.rows != xs.shape[0]:
            _bind_rows(sc, xs.shape[0], xs)
        n = c1 - c0
        if sc.fast and sc.full_pre[c1] - sc.full_pre[c0] == n:
            # Every row at every position of the window, one source position: one block.
            src = None
            if sc.needs_src:
                src = sc.src_rows.expand(-1, n, -1)
            elif sc.from_input:
                src = as_3d(find_input(args, kwargs)[0], xs.shape[0])
            return xs, src, sc.subs_rows, None
        # General path: the window's (row, position) pairs as a pseudo-batch [pairs, units, width].
        r, j = sc.sel_rows[:, c0:c1].nonzero(as_tuple=True)
        c = j + c0
        ex = sc.row_ex[r]
        cols = sc.cols
        if cols is None:
            vals = xs[r, j].unsqueeze(1)
        else:
            vals = xs[r.unsqueeze(1), j.unsqueeze(1), cols[ex]].view(r.shape[0], sc.n_units, -1)
        src = None
        if sc.needs_src:
            sp = sc.srcpos_rows[r, c]
            if sc.heads is None:
                src = sc.src_dev[ex, sp].unsqueeze(1)
            else:
                s4 = sc.src_dev.view(sc.src_dev.shape[0], sc.n_units, -1, sc.src_dev.shape[-1])
                src = s4[ex, :, sp]
        elif sc.from_input:
            inp = as_3d(find_input(args, kwargs)[0], xs.shape[0])
            src = inp[r, j].unsqueeze(1) if cols is None else inp[r.unsqueeze(1), j.unsqueeze(1), cols[ex]].view_as(vals)
        subs = sc.subs_rows
        if sc.subs_per_example:
            subs = [subs[i] for i in r.tolist()]
        return vals, src, subs, (r, j, c, ex)

    def record(self, slot, new, where) -> None:
        sc = self.schedules[slot.index]
        if where is None:
            _record(sc, self, new, None, None)
        else:
            _record(sc, self, new, where[0], where[2])

    def write(self, slot, x, vals, new, where, inplace: bool):
        xs = self._xs(slot, x)
        if where is None:  # the block path: vals is the whole window
            if inplace:
                xs.copy_(new)
                return x, inplace
            # A copy: the result may be a view of the source (an interchange returns it).
            xs = new.to(xs.dtype, copy=True, memory_format=torch.contiguous_format)
            return (xs.reshape(x.shape) if x.dim() != 3 else xs), True  # xs is now our own tensor
        r, j, _, ex = where
        if not inplace:
            xs = xs.clone()
            x = xs.reshape(x.shape) if x.dim() != 3 else xs
            inplace = True
        sc = self.schedules[slot.index]
        new = new.to(xs.dtype).reshape(r.shape[0], -1)
        if sc.cols is None:
            xs[r, j] = new
        else:
            xs[r.unsqueeze(1), j.unsqueeze(1), sc.cols[ex]] = new
        return x, inplace

    def missed(self, slots) -> list:
        """Slots with positions among those computed that never ran."""
        return [s for s in slots if not self.schedules[s.index].fired and self.schedules[s.index].any_pre[self.seen] > 0]


def _record(sc: _Schedule, step: StepWindow, new, r, c):
    """Keep the values of positions computed for the first time in this step."""
    rows = sc.rows
    if sc.buf is None:
        width = new.shape[-1] * (sc.n_units if sc.heads is not None else 1)
        sc.width = width
        # Column n_cols stays NaN: the layout points there for entries never computed.
        sc.buf = torch.full((rows, step.n_cols + 1, width), float("nan"), dtype=new.dtype, device=new.device)
    if r is None:  # a [rows, window, width] block
        k = step.new - step.c0
        if k < new.shape[1]:
            sc.buf[:, step.new:step.c1] = new[:, k:].detach()
        return
    keep = c >= step.new
    if not bool(keep.all()):
        r, c, new = r[keep], c[keep], new[keep]
    sc.buf[r, c] = new.detach().reshape(r.shape[0], sc.width)


def _collected(sc: _Schedule, bsz: int) -> torch.Tensor | None:
    if sc.buf is None:
        return None
    rows = sc.rows
    layout = sc.layout.to(sc.buf.device)[sc.row_ex]  # [rows, J]
    out = sc.buf[torch.arange(rows, device=layout.device).unsqueeze(1), layout]  # [rows, J, width]
    if sc.heads is None:
        return out
    hd = out.shape[-1] // sc.n_units
    return out.view(rows, -1, sc.n_units, hd).transpose(1, 2).reshape(rows, -1, hd)


# -- the call -----------------------------------------------------------------------------------
def _hf_generate(model, inputs: dict, generate_kwargs: dict):
    """``model.generate``, with a ShapeError naming the input when a bad one made it fail."""
    try:
        return model.generate(**inputs, **generate_kwargs)
    except (IndexError, RuntimeError, ValueError) as e:
        raise_for_inputs(model, inputs, e)
        raise


def generate(executor: Executor, model, base, sources=None, unit_locations=None,
             source_representations=None, intervene_on_prompt: bool = True, timesteps=None,
             subspaces=None, output_original_output: bool = False, return_dict: bool = False,
             **generate_kwargs):
    """Run ``model.generate`` with the interventions of ``executor``'s plan; see the module
    docstring."""
    plan = executor.plan
    slots = plan.slots
    n = len(slots)
    if plan.mode != "parallel":
        raise ConfigError("generate: mode='serial' is not supported during generation; use mode='parallel'")
    if plan.has_steps:
        raise ConfigError("generate: unit 't' (calls of a recurrent cell) is not supported during generation; "
                          "use forward")
    if not callable(getattr(model, "generate", None)):
        raise ConfigError(f"generate: the wrapped {type(model).__name__} has no generate() method")
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ConfigError("generate: encoder-decoder models are not supported yet; use a decoder-only model")
    if not isinstance(intervene_on_prompt, bool):
        raise ConfigError(f"intervene_on_prompt must be True or False, got {intervene_on_prompt!r}")
    for key in ("input_ids", "attention_mask", "inputs_embeds"):
        if key in generate_kwargs:
            raise ConfigError(f"generate: pass {key} inside base, not as a keyword argument")

    for key in ("num_beams", "num_return_sequences", "num_beam_groups"):
        # these size the batch of rows the interventions map back to examples (row // k); HF
        # itself fails on 0 with a raw ZeroDivisionError
        if generate_kwargs.get(key) is not None:
            check_positive_int(generate_kwargs[key], f"generate: {key}")

    inputs = _as_inputs(base, "base")
    ids = inputs["input_ids"]
    if ids.dim() != 2:
        raise ShapeError(f"base: input_ids must be [batch, length], got shape {tuple(ids.shape)}")
    bsz, length = ids.shape
    pads = _left_pads(inputs.get("attention_mask"), bsz, length, "base")
    lengths = [length - p for p in pads]
    n_new = _max_new_tokens(model, length, generate_kwargs)
    # Positions are planned up front, so a max_new_tokens far past what the model can embed
    # (max_new_tokens=10**9) is planned only up to that limit; a step past it is an error.
    limit = _position_limit(model)
    n_plan = n_new if limit is None else max(1, min(n_new, limit - length + 1))
    steps = _timesteps(timesteps, n_plan)
    if not intervene_on_prompt and not steps:
        raise ConfigError(
            "generate: intervene_on_prompt=False and timesteps=None leave nothing to intervene on; "
            "set timesteps ('all', an int or a list of generated-token indices) or intervene_on_prompt=True"
        )
    has_collect = plan.has_collect
    if has_collect:
        beams = generate_kwargs.get("num_beams")
        gc = generate_kwargs.get("generation_config") or getattr(model, "generation_config", None)
        if (beams if beams is not None else getattr(gc, "num_beams", 1) or 1) > 1:
            raise ConfigError(
                "generate: Collect interventions are not supported with beam search (num_beams > 1): "
                "beams swap hypotheses between steps, so a row's activations would mix sequences"
            )

    src_locs, base_locs = normalize_locations(unit_locations, slots, plan.mode)
    reprs = normalize_source_representations(source_representations, slots)
    sub_list = normalize_subspaces(subspaces, slots) or [None] * n

    # Sources: each distinct input runs once, now; every step then reads these tensors.
    has_repr = [r is not None for r in reprs]
    per_slot_src = normalize_sources(sources, slots, has_repr, bsz)
    # A batch-1 source for a batch of prompts: seen (as views) as one copy per prompt, so the
    # per-example position tables below need no special case.
    per_slot_src = [expand_inputs(s, bsz) if s is not None and bsz > 1 and batch_size(s, "sources") == 1 else s
                    for s in per_slot_src]
    src_vals = [check_repr(r, s) if r is not None and s.intervention.source_from == "source" else None
                for r, s in zip(reprs, slots)]
    if any(s is not None for s in per_slot_src):
        shifted = list(src_locs)
        for i, (slot, src) in enumerate(zip(slots, per_slot_src)):
            if src is not None and isinstance(src, Mapping) and isinstance(src.get("input_ids"), torch.Tensor):
                s_ids = src["input_ids"]
                s_pads = _left_pads(src.get("attention_mask"), s_ids.shape[0], s_ids.shape[1], f"sources[{slot.group}]")
                shifted[i] = _shift_source_locations(src_locs[i], slot.rep.unit, s_pads,
                                                     f"unit_locations (source of {slot.label})")
        with torch.no_grad():
            collected_src = executor.run_sources(model, per_slot_src, shifted, bsz)
        for i, t in enumerate(collected_src):
            if t is not None:
                src_vals[i] = t

    n_cols = length + n_plan - 1  # the last generated token is never fed back
    schedules = [
        _build_schedule(slot, base_locs[i], src_vals[i], sub_list[i], intervene_on_prompt, steps,
                        lengths, pads, n_cols)
        for i, slot in enumerate(slots)
    ]

    original = _hf_generate(model, inputs, generate_kwargs) if output_original_output else None
    step = StepWindow(n_cols, schedules)
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - transformers always has it
        Cache = ()

    def on_model(m, args, kwargs):
        # Every forward step of the loop: which columns it computes, for how many rows.
        t = kwargs.get("input_ids")
        if t is None:
            t = kwargs.get("inputs_embeds")
        if t is None and args and isinstance(args[0], torch.Tensor):
            t = args[0]
        cache = kwargs.get("cache")
        if not isinstance(cache, Cache):
            cache = next((v for v in kwargs.values() if isinstance(v, Cache)), None)
        past = cache.get_seq_length() if cache is not None else 0
        c1 = past + t.shape[1]
        if c1 > n_cols:
            raise ConfigError(
                f"generate: a step computes positions up to column {c1 - 1}, past the {n_cols} columns "
                f"planned for a prompt of {length} and max_new_tokens={n_new}"
                + (f" (planned up to the model's {limit} positions)" if n_plan < n_new else "")
            )
        step.c0, step.c1, step.rows = past, c1, t.shape[0]
        step.new = max(past, step.seen)
        step.seen = max(step.seen, c1)

    prev = executor.window
    executor.window = step
    try:
        with HookSet() as hooks:
            hooks.pre(model, on_model)
            executor.install_writes(hooks)
            with torch.no_grad():
                intervened = _hf_generate(model, inputs, generate_kwargs)
    finally:
        executor.window = prev
    # An intervention with positions among those computed must have run.
    missed = step.missed(slots)
    if missed:
        raise ConfigError(
            f"{missed[0].label}: generation never reached {missed[0].site.description}; is the "
            f"module used in this model's forward?"
        )
    collected = [_collected(sc, bsz) for sc in schedules if sc.collect]
    return shape_outputs(original, intervened, collected, has_collect, return_dict)
