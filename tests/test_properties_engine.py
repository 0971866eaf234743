"""Property-based tests of the engine's call-time inputs on a tiny GPT-2 (issue 13).

Generated unit locations (ints, negatives, out of range, floats, bools, NaN, lists of the wrong
depth or batch), subspaces (ids in and out of range, floats, bools; flat, per example, per
example and unit, or a count that is not the batch) and
source representations (shapes, dtypes, NaN) go into one interchange or addition call. The
outcome is EITHER the result a hand-written torch forward hook gives for the same edit on the
same module, OR a library error (:class:`PyveneLikeError`) whose message shows the offending
value. Either way the model is left as found: the same hooks on every module, parameters
bit-identical, the same ``requires_grad`` and train/eval flags, and a plain forward gives
bit-identical outputs to the one before the call.

CI-sized by default (``HYPOTHESIS_PROFILE=long`` for a thorough run; see conftest.py).
"""

from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reference import capture, run_with_edit  # noqa: E402
from transformers import GPT2Config, GPT2Model  # noqa: E402

import pyvene_like as pv  # noqa: E402
from pyvene_like.errors import PyveneLikeError  # noqa: E402
from pyvene_like.validation import is_int  # noqa: E402

W, T, B = 16, 5, 2  # width, sequence length, batch


class Tiny(list):
    """The model, with a short repr for hypothesis' reports."""

    def __repr__(self):
        return "Tiny(gpt2)"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=W, n_head=2, vocab_size=50, n_positions=16,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # deterministic in train mode too
    model = GPT2Model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    base = {"input_ids": torch.randint(0, 50, (B, T), generator=g)}
    source = {"input_ids": torch.randint(0, 50, (B, T), generator=g)}
    return Tiny([model, base, source])


# -- generated inputs, each with what a correct library must do with it ---------------------------
# A value is ("ok", meaning) or ("bad", [strings one of which the error message must show]).
def _shown(v) -> str:
    return repr(v)


def _position_ok(p) -> bool:
    return is_int(p) and -T <= p < T


valid_positions = st.integers(-T, T - 1)
bad_positions = st.one_of(
    st.integers(T, 12), st.integers(-12, -T - 1), st.sampled_from([10**30, -(2**63)]),
    st.floats(-2, 6), st.sampled_from([math.nan, math.inf, 1.0]), st.booleans(),
)
valid_ids = st.integers(0, W - 1)
bad_ids = st.one_of(st.integers(-3, -1), st.integers(W, W + 3), st.just(2**64), st.floats(0, W),
                    st.sampled_from([math.nan, 0.0]), st.booleans())


def _corrupt(draw, rows, bad, label):
    """One time in four, one entry of ``rows`` becomes a drawn bad value."""
    if draw(st.integers(0, 3), label=f"corrupt {label}?") == 0:
        e = draw(st.integers(0, len(rows) - 1))
        u = draw(st.integers(0, len(rows[e]) - 1))
        rows = [list(r) for r in rows]
        rows[e][u] = draw(bad, label=f"bad {label}")
    return rows


@st.composite
def locations(draw):
    """unit_locations for the base (the source uses the same): the object, and either the
    positions [batch][k] it means or the values an error must show."""
    form = draw(st.sampled_from(["int", "int", "per_example", "per_example", "per_example", "per_example",
                                 "one_for_batch", "one_for_batch", "too_deep", "wrong_batch"]))
    if form == "int":
        p = draw(st.one_of(valid_positions, valid_positions, valid_positions, bad_positions))
        if _position_ok(p):
            return p, ("ok", [[p % T]] * B)
        return p, ("bad", [_shown(p)])
    k = draw(st.integers(1, 3))
    # distinct positions per example (an edit of one position twice has no single meaning)
    rows = [draw(st.lists(valid_positions, min_size=k, max_size=k, unique_by=lambda p: p % T)) for _ in range(B)]
    rows = _corrupt(draw, rows, bad_positions, "position")
    if form == "one_for_batch":
        rows = [rows[0]] * B
    bad = [_shown(p) for r in rows for p in r if not _position_ok(p)]
    if form == "too_deep":
        return [[[[p] for p in r] for r in rows]], ("bad", [_shown([rows[0][0]])])
    if form == "wrong_batch":
        return [rows + [rows[0]]], ("bad", [f"has {B + 1} examples", *bad])
    obj = [[rows[0]]] if form == "one_for_batch" else [rows]
    if bad:
        return obj, ("bad", bad)
    return obj, ("ok", [[p % T for p in r] for r in rows])


@st.composite
def subspaces(draw):
    """None, a flat id list (every example) or one id list per example: the object, and the
    selected dims [batch] or the values an error must show."""
    form = draw(st.sampled_from(["none", "flat", "per_example", "per_example"]))
    if form == "none":
        return None, ("ok", [list(range(W))] * B)
    rows = [draw(st.lists(valid_ids, min_size=1, max_size=4)) for _ in range(B)]
    rows = _corrupt(draw, rows, bad_ids, "subspace id")
    if form == "flat":
        rows = [rows[0]] * B
    bad = [_shown(i) for r in rows for i in r if not (is_int(i) and 0 <= i < W)]
    obj = rows[0] if form == "flat" else [rows]
    if bad:
        return obj, ("bad", bad)
    return obj, ("ok", [sorted(set(r)) for r in rows])


@st.composite
def representations(draw, k: int):
    """A source representation for an addition at k units: the tensor, and either the
    [batch, k, width] float32 values it adds or the values an error must show."""
    shape = draw(st.one_of(
        st.sampled_from([(W,), (1, W), (k, W), (B, k, W), (B, 1, W), (1, 1, W)]),
        st.sampled_from([(W - 1,), (B, W), (2, 2, W), (B, k, W + 1), (1, 1, 1, W), ()])), label="shape")
    dtype = draw(st.one_of(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
                           st.just(torch.float32),
                           st.sampled_from([torch.int64, torch.bool, torch.complex64])), label="dtype")
    g = torch.Generator().manual_seed(draw(st.integers(0, 3)))
    t = torch.randn(shape, generator=g)
    if draw(st.integers(0, 3), label="NaN?") == 0 and t.numel():
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = float("nan")
    t = t.to(dtype)
    if not dtype.is_floating_point:
        return t, ("bad", [str(dtype)])
    if t.dim() == 0:
        return t, ("bad", ["0-d"])
    if t.shape[-1] != W:
        return t, ("bad", [str(t.shape[-1])])
    try:
        fits = t.dim() <= 3 and torch.broadcast_shapes(t.shape, (B, k, W)) == (B, k, W)
    except RuntimeError:
        fits = False
    if not fits:
        return t, ("bad", [str(tuple(t.shape))])
    return t, ("ok", t.to(torch.float32).expand(B, k, W))


# -- the model as found ----------------------------------------------------------------------------
def _fingerprint(model):
    return {
        "hooks": [(name, list(m._forward_hooks.items()), list(m._forward_pre_hooks.items()),
                   list(m._backward_hooks.items())) for name, m in model.named_modules()],
        "params": [(n, p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()],
        "training": [m.training for m in model.modules()],
    }


def _same(a, b) -> bool:
    return (a["hooks"] == b["hooks"] and a["training"] == b["training"]
            and all(x[:2] == y[:2] and torch.equal(x[2], y[2]) for x, y in zip(a["params"], b["params"])))


def _plain(model, base):
    with torch.no_grad():
        return model(**base).last_hidden_state


def _module(model, component, layer):
    block = model.h[layer]
    return block if component == "block_output" else block.mlp


# -- the property ----------------------------------------------------------------------------------
@given(data=st.data())
def test_a_call_is_correct_or_a_library_error_and_leaves_the_model_as_found(tiny, data):
    model, base, source = tiny
    kind = data.draw(st.sampled_from(["vanilla", "addition"]), label="kind")
    component = data.draw(st.sampled_from(["block_output", "mlp_output"]), label="component")
    layer = data.draw(st.integers(0, 1), label="layer")
    locs, loc_meaning = data.draw(locations(), label="unit_locations")
    subs, sub_meaning = data.draw(subspaces(), label="subspaces")
    k = len(loc_meaning[1][0]) if loc_meaning[0] == "ok" else 1
    rep, rep_meaning = (data.draw(representations(k), label="source_representations") if kind == "addition"
                        else (None, ("ok", None)))

    # The model as the user left it: a mode and requires_grad flags of their choosing.
    model.train(data.draw(st.booleans(), label="train mode"))
    frozen = data.draw(st.sets(st.sampled_from([n for n, _ in model.named_parameters()]), max_size=3), label="frozen")
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    before, plain_before = _fingerprint(model), _plain(model, base)

    im = pv.IntervenableModel({"layer": layer, "component": component, "intervention_type": kind}, model)
    assert im.sites[0].module is _module(model, component, layer)
    bad = [s for meaning in (loc_meaning, sub_meaning, rep_meaning) if meaning[0] == "bad" for s in meaning[1]]
    try:
        if kind == "vanilla":
            out = im(base, [source], {"sources->base": (locs, locs)}, subspaces=subs)[1]
        else:
            out = im(base, unit_locations={"base": locs}, source_representations=rep, subspaces=subs)[1]
    except PyveneLikeError as e:
        event(f"refused: {type(e).__name__}")
        assert bad, f"valid inputs were refused: {type(e).__name__}: {e}"
        assert any(s in str(e) for s in bad), f"the error shows none of {bad}: {e}"
    else:
        assert not bad, f"accepted although {bad} is not valid"
        event(f"checked against the hook: {kind}" + (", subspaces" if subs is not None else "")
              + (", NaN" if rep is not None and bool(rep.isnan().any()) else ""))
        positions, dims = loc_meaning[1], sub_meaning[1]
        module = _module(model, component, layer)
        if kind == "vanilla":
            src = capture(model, module, "output", source)

            def edit(h):
                for e in range(B):
                    for p in positions[e]:
                        h[e, p, dims[e]] = src[e, p, dims[e]]
                return h
        else:
            add = rep_meaning[1]

            def edit(h):
                for e in range(B):
                    for u, p in enumerate(positions[e]):
                        h[e, p, dims[e]] = h[e, p, dims[e]] + add[e, u, dims[e]]
                return h
        with torch.no_grad():
            ref = run_with_edit(model, module, "output", base, edit).last_hidden_state
        torch.testing.assert_close(out.last_hidden_state, ref, equal_nan=True)

    assert _same(_fingerprint(model), before), "the call changed the model's hooks, parameters or flags"
    assert torch.equal(_plain(model, base), plain_before)
