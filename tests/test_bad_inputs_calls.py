"""Bad call-time inputs: subspace ids and what function interventions return.

Each case is either refused with a library error naming the value and what is accepted, or
(where pyvene accepts it) checked to work; nothing is truncated, wrapped or cast silently.
"""

from __future__ import annotations

import pytest
import torch

import pyvene_like as pv
from pyvene_like.errors import LocationError

PART = [[0, 32], [32, 64]]


def _ids(seed, bsz=2, n=6):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 1000, (bsz, n), generator=g)}


def _call(gpt2, subspaces, itype="vanilla", **rep):
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type=itype, **rep), gpt2)
    return im(_ids(1), [_ids(2)], {"sources->base": 1}, subspaces=subspaces)[1]


# -- subspace ids --------------------------------------------------------------------------------
@pytest.mark.parametrize("itype", ["vanilla", "addition", "zero", "collect", "rotated_space"])
@pytest.mark.parametrize("subspaces, match", [
    ([[[-1]] * 2], r"subspace id -1 is past subspace_partition \[\[0, 32\], \[32, 64\]\] \(accepted ids: 0\.\.1\)"),
    ([-2], r"subspace id -2 is past subspace_partition"),
    ([[[-100]] * 2], r"subspace id -100 is past subspace_partition"),
    ([[[10**30]] * 2], r"subspace id 1000000000000000000000000000000 is past subspace_partition"),
    ([[[2**63]] * 2], r"subspace id 9223372036854775808 is past"),
])
def test_out_of_range_partition_ids_are_refused_not_wrapped(gpt2, itype, subspaces, match):
    """A negative id with a partition indexed the partition table from the end (id -1 silently
    meant the last group); ids beyond int64 overflowed in torch.as_tensor."""
    with pytest.raises(LocationError, match=match):
        _call(gpt2, subspaces, itype, subspace_partition=PART)


@pytest.mark.parametrize("itype", ["vanilla", "addition", "zero", "rotated_space"])
@pytest.mark.parametrize("subspaces, shown", [
    ([[[0.0]] * 2], "0.0"), ([[[1.5]] * 2], "1.5"), ([[[True]] * 2], "True"),
    ([[[float("nan")]] * 2], "nan"), ([[[[0.0]], [[0]]]], "0.0"), ([["a"]], "'a'"),
    ([torch.tensor([[0.0], [1.0]])], "0.0"), ([torch.tensor([[True], [False]])], "True"),
])
@pytest.mark.parametrize("partition", [None, PART])
def test_non_int_subspace_ids_are_refused_not_truncated(gpt2, itype, subspaces, shown, partition):
    """A float id was truncated (1.5 -> dimension 1), a bool was read as 0/1, NaN overflowed
    raw; per-unit lists ([batch][units][ids]) are checked the same way."""
    with pytest.raises(LocationError, match=rf"subspaces: ids must be ints \(not bools, floats or deeper lists\).*got {shown}"):
        _call(gpt2, subspaces, itype, subspace_partition=partition)


@pytest.mark.parametrize("subspaces", [[[[10**30]] * 2], [10**30], [[[2**63]] * 2]])
def test_huge_dimension_ids_are_refused_without_overflow(gpt2, subspaces):
    with pytest.raises(LocationError, match=r"dimension \d{19,} is outside the site's width 64"):
        _call(gpt2, subspaces)


def test_numpy_int_ids_work_like_ints(gpt2):
    np = pytest.importorskip("numpy")
    ref = _call(gpt2, [[[1]] * 2], subspace_partition=PART).logits
    for sub in ([[[np.int64(1)]] * 2], [np.int64(1)], [torch.tensor([[1], [1]])]):
        torch.testing.assert_close(_call(gpt2, sub, subspace_partition=PART).logits, ref)


def test_sae_subspace_ids_use_the_same_rules():
    from pyvene_like.sae import SAE, SAEInterchangeIntervention

    torch.manual_seed(0)
    sae = SAE(d_in=8, d_sae=16)
    iv = SAEInterchangeIntervention(sae)
    base = torch.randn(2, 1, 8)
    with pytest.raises(LocationError, match=r"ids must be ints.*got 1\.0"):
        iv(base, base, [[1.0], [1.0]])
    with pytest.raises(LocationError, match=r"feature 99999999999999999999 is outside the SAE's 16 features"):
        iv(base, base, [[99999999999999999999]] * 2)
    part = SAEInterchangeIntervention(sae, subspace_partition=[[0, 8], [8, 16]])
    with pytest.raises(LocationError, match=r"subspace id -1 is past subspace_partition"):
        part(base, base, [[-1], [-1]])


@pytest.mark.parametrize("subspaces, match", [
    ([-1], r"subspace id -1 is past subspace_partition"),
    ([[[1.5]] * 2], r"ids must be ints.*got 1\.5"),
    ([[[10**30]] * 2], r"subspace id 1000000000000000000000000000000 is past"),
])
def test_generate_checks_subspace_ids_the_same_way(gpt2, subspaces, match):
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "block_output", intervention_type="addition",
                                                      subspace_partition=PART), gpt2)
    with pytest.raises(LocationError, match=match):
        im.generate(_ids(1), unit_locations={"base": 1}, source_representations=torch.ones(64),
                    subspaces=subspaces, max_new_tokens=2)


# -- function interventions ----------------------------------------------------------------------
def _fn_list(b, s):
    return b.tolist()


def _fn_numpy(b, s):
    return b.detach().numpy()


def _fn_int(b, s):
    return b.long()


def _fn_complex(b, s):
    return b.to(torch.complex64)


def _fn_bool(b, s):
    return b > 0


def _fn_narrow(b, s):
    return b[..., :3]


def _fn_scalar(b, s):
    return 1.0


@pytest.mark.parametrize("how", ["intervention_type", "intervention_kwargs"])
@pytest.mark.parametrize("fn, got", [
    (_fn_list, "a list"), (_fn_numpy, "a ndarray"), (_fn_scalar, "a float"),
    (_fn_int, r"a tensor .*dtype torch\.int64"), (_fn_complex, r"a tensor .*dtype torch\.complex64"),
    (_fn_bool, r"a tensor .*dtype torch\.bool"),
    (_fn_narrow, r"a tensor of shape \(2, 1, 3\)"),
])
def test_a_function_returning_anything_but_a_float_tensor_or_none_is_refused(gpt2, how, fn, got):
    """A list failed with AttributeError in the runner; int, bool and complex results were cast
    to the activation's dtype without a word."""
    spec = ({"intervention_type": fn} if how == "intervention_type"
            else {"intervention_type": "lambda", "intervention_kwargs": {"fn": fn}})
    im = pv.IntervenableModel({"layer": 0, "component": "block_output", **spec}, gpt2)
    with pytest.raises(pv.ShapeError, match=rf"LambdaIntervention: fn '{fn.__name__}' returned {got}.*accepted: "
                                            r"None \(no change\) or a floating-point tensor shaped like its base "
                                            r"units \(2, 1, 64\)"):
        im(_ids(1), [_ids(2)], {"sources->base": 1})
    with pytest.raises(pv.ShapeError, match=rf"fn '{fn.__name__}' returned {got}"):
        im.generate(_ids(1), [_ids(2)], {"sources->base": 1}, max_new_tokens=2)


def test_a_function_returning_another_float_dtype_is_cast_like_other_interventions(gpt2):
    im = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": lambda b, s: s.double()},
                              gpt2)
    ref = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2)
    args = (_ids(1), [_ids(2)], {"sources->base": 1})
    torch.testing.assert_close(im(*args)[1].logits, ref(*args)[1].logits)


def _one(b):
    return b


def _four(b, s, sub, extra):
    return b


def _kw_only(b, s, *, scale=2.0):
    return b * scale


def _star(*args):
    return args[0] * 0 + args[1]


@pytest.mark.parametrize("fn, sig", [(_one, r"\(b\)"), (_four, r"\(b, s, sub, extra\)")])
def test_a_function_of_the_wrong_arity_is_refused_when_built(gpt2, fn, sig):
    """It failed at the first call with a raw TypeError from inside the hook."""
    for spec in ({"intervention_type": fn}, {"intervention_type": "lambda", "intervention_kwargs": {"fn": fn}}):
        with pytest.raises(pv.ConfigError, match=rf"LambdaIntervention: fn '{fn.__name__}' has signature {sig}; "
                                                 r"accepted: a function of \(base, source\) or \(base, source, subspaces\)"):
            pv.IntervenableModel({"layer": 0, "component": "block_output", **spec}, gpt2)


def test_keyword_only_and_star_args_functions_are_called_positionally(gpt2):
    """A keyword-only parameter was counted as a third positional one (TypeError at call)."""
    args = (_ids(1), [_ids(2)], {"sources->base": 1})
    base_out = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": lambda b, s: b * 2.0},
                                    gpt2)(*args)[1].logits
    kw = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": _kw_only}, gpt2)
    torch.testing.assert_close(kw(*args)[1].logits, base_out)
    star = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": _star}, gpt2)
    vanilla = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2)
    torch.testing.assert_close(star(*args)[1].logits, vanilla(*args)[1].logits)


class _ReturnsList(pv.Intervention):
    source_from = None

    def forward(self, base, source=None, subspaces=None):
        return base.tolist()


class _ReadsNothing(pv.Intervention):
    source_from = None
    modifies_output = False

    def forward(self, base, source=None, subspaces=None):
        return None


class _ReturnsInt(pv.Intervention):
    source_from = None

    def forward(self, base, source=None, subspaces=None):
        return base.long()


@pytest.mark.parametrize("cls, match", [
    (_ReturnsList, r"_ReturnsList at .*\) returned list; expected a floating-point tensor of shape \(2, 1, 64\) or None"),
    (_ReadsNothing, r"_ReadsNothing at .*\) returned None; expected a floating-point tensor of shape \(2, 1, 64\) "
                    r"\(the values it collects\)"),
    (_ReturnsInt, r"_ReturnsInt at .*\) returned a torch\.int64 tensor; .*not cast silently"),
])
def test_intervention_subclasses_returning_the_wrong_kind_of_value(gpt2, cls, match):
    im = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": cls}, gpt2)
    with pytest.raises(pv.ShapeError, match=match):
        im(_ids(1), unit_locations={"base": 1})
    with pytest.raises(pv.ShapeError, match=match):
        im.generate(_ids(1), unit_locations={"base": 1}, max_new_tokens=2)


# -- values outside the subspaces -----------------------------------------------------------------
@pytest.mark.parametrize("cls, call", [
    (pv.AdditionIntervention, lambda iv, b, s: iv(b, s, [[0, 1]] * 2)),
    (pv.SubtractionIntervention, lambda iv, b, s: iv(b, s, [[0, 1]] * 2)),
])
def test_nan_and_inf_outside_the_subspaces_do_not_leak_into_them(cls, call):
    """The unselected dims were multiplied by the mask: NaN * 0 = NaN reached dims the subspaces
    leave alone (a NaN in dim 2 of a steering vector made the whole output NaN downstream)."""
    base = torch.zeros(2, 1, 4)
    source = torch.tensor([1.0, 2.0, float("nan"), float("inf")]).expand(2, 1, 4)
    out = call(cls(), base, source)
    assert torch.isfinite(out).all()
    assert out[..., :2].abs().tolist() == [[[1.0, 2.0]]] * 2 and out[..., 2:].tolist() == [[[0.0, 0.0]]] * 2


def test_collect_with_subspaces_returns_only_the_selected_dims_so_nan_elsewhere_stays_out():
    source = torch.tensor([1.0, 2.0, float("nan"), float("inf")]).expand(2, 1, 4)
    out = pv.CollectIntervention()(source, None, [[1, 0]] * 2)
    assert out.tolist() == [[[2.0, 1.0]]] * 2  # in the order the ids name them


# -- indices past int64 ------------------------------------------------------------------------------
@pytest.mark.parametrize("loc, match", [
    ([[[10**30]] * 2], r"position 1000000000000000000000000000000 is out of range"),
    ([[[0], [-(10**30)]]], r"position -1000000000000000000000000000000 is out of range"),
])
def test_positions_past_int64_are_out_of_range_not_ragged(gpt2, loc, match):
    """They were reported as 'expected [batch][n] ... with the same n for every example'."""
    im = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": "zero"}, gpt2)
    with pytest.raises(LocationError, match=match):
        im(_ids(1), unit_locations={"base": loc})
    with pytest.raises(LocationError, match=match):
        im.generate(_ids(1), unit_locations={"base": loc}, max_new_tokens=2)


@pytest.mark.parametrize("loc", [10**30, [[[10**30]] * 2]])
def test_heads_past_int64_are_out_of_range_not_an_overflow(gpt2, loc):
    """An int head of 10**30 was a raw OverflowError from torch.full."""
    im = pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output", "unit": "h",
                               "intervention_type": "zero"}, gpt2)
    with pytest.raises(LocationError, match=r"head 1000000000000000000000000000000 is out of range \(accepted: "
                                            r"indices within the model's heads\)"):
        im(_ids(1), unit_locations={"base": loc})
