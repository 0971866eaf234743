"""The engine's own objects: the compiled Plan, the Executor and its windows, the argument cache."""

import pytest
import torch

import pyvene_like as pv
from pyvene_like.engine.arguments import freeze, is_frozen
from pyvene_like.engine.outputs import IntervenableModelOutput, shape_outputs
from pyvene_like.engine.plan import Plan
from pyvene_like.engine.runner import Executor, ForwardWindow, apply_members


def test_plan_groups_slots_by_module_and_side(gpt2):
    cfg = [
        pv.RepresentationConfig(1, "block_output"),
        pv.RepresentationConfig(2, "block_output", intervention_type="collect"),
        pv.RepresentationConfig(1, "block_output", intervention_type="addition"),
        pv.RepresentationConfig(1, "block_input"),
    ]
    im = pv.IntervenableModel(cfg, gpt2)
    plan = im.plan
    assert isinstance(plan, Plan) and len(plan) == 4 and list(im.interventions) == [s.intervention for s in plan.slots]
    assert plan.has_collect and plan.mode == "parallel"
    members = [tuple(s.index for s in m) for _, _, m in plan.groups]
    assert sorted(members) == [(0, 2), (1,), (3,)]
    assert all(len({(id(s.site.module), s.site.io) for s in m}) == 1 for _, _, m in plan.groups)
    assert [iv for iv in plan.interventions] == list(im.interventions)


def test_forward_and_generate_register_the_same_prebuilt_hooks(gpt2):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    block = gpt2.transformer.h[1]
    seen = []
    orig = block.register_forward_hook

    def spy(fn, **kw):
        seen.append(fn)
        return orig(fn, **kw)

    block.register_forward_hook = spy
    try:
        vec = torch.randn(64)
        ids = torch.randint(1, 1000, (1, 5))
        im({"input_ids": ids}, unit_locations={"base": 2}, source_representations=vec)
        im.generate({"input_ids": ids}, source_representations=vec, max_new_tokens=2, do_sample=False,
                    pad_token_id=0)
    finally:
        del block.register_forward_hook
    assert len(seen) == 2 and seen[0] is seen[1]  # one hook body, built once
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in gpt2.modules()) == 0


class _Doubler:
    """A window that doubles every slot's values over the whole activation: the hook body only
    talks to the window."""

    def __init__(self):
        self.calls = []

    def select(self, slot, x, args, kwargs):
        self.calls.append(slot.index)
        return x, None, None, "everything"

    def record(self, slot, new, where):  # pragma: no cover - no Collect here
        raise AssertionError

    def write(self, slot, x, vals, new, where, inplace):
        assert where == "everything"
        return new.clone(), inplace


def test_hook_body_works_through_any_window(gpt2):
    im = pv.IntervenableModel(
        [pv.RepresentationConfig(1, "block_output", intervention_type=lambda b, s: b * 2)] * 1, gpt2
    )
    (_, _, members), = im.plan.groups
    window = _Doubler()
    x = torch.ones(1, 3, 64)
    out = apply_members(members, window, x, (), {}, True)
    assert window.calls == [0] and torch.equal(out, torch.full((1, 3, 64), 2.0))


def test_forward_window_collects_in_config_order():
    w = ForwardWindow(3)
    w.collected[2] = "b"
    w.collected[0] = "a"
    assert w.collected_list() == ["a", "b"] and ForwardWindow(1).collected_list() == []


def test_call_arguments_are_cached_without_aliasing_the_callers_lists(gpt2, ids):
    base, src = ids
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output"), gpt2)
    ex = im._executor
    locs = [[[3], [4], [5]]]
    first = ex.call_args({"sources->base": (locs, 7)}, 3)
    assert ex.call_args({"sources->base": ([[[3], [4], [5]]], 7)}, 3) is first
    locs[0][0][0] = 9  # the caller changes its list: a new key, and the cached entry is untouched
    assert first.src_locs[0][0] == [3]
    assert ex.call_args({"sources->base": (locs, 7)}, 3) is not first
    out1 = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": ([[[1], [2], [3]]], 7)})[1].logits
    out2 = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": ([[[1], [2], [3]]], 7)})[1].logits
    assert torch.equal(out1, out2)
    # Tensors are not cached (their contents can change in place).
    assert not is_frozen(freeze({"base": torch.tensor([1])}))
    assert freeze([1, 2]) != freeze((1, 2)) and not is_frozen(freeze([True]))


def test_executor_leaves_no_call_state_behind(gpt2, ids):
    base, src = ids
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), gpt2)
    im({"input_ids": base}, [{"input_ids": src}], {"sources->base": 2})
    with pytest.raises(pv.LocationError):
        im({"input_ids": base}, [{"input_ids": src}], {"sources->base": 50})
    assert im._executor.window is None and im._executor.reads is None
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in gpt2.modules()) == 0


def test_shape_outputs():
    assert shape_outputs("o", "i", [], False, False) == ("o", "i")
    assert shape_outputs("o", "i", ["c"], True, False) == (("o", ["c"]), "i")
    out = shape_outputs("o", "i", ["c"], False, True)
    assert isinstance(out, IntervenableModelOutput) and out.collected_activations is None
    assert pv.IntervenableModelOutput is IntervenableModelOutput


def test_executor_runs_a_plan_without_the_model_wrapper(gpt2, ids):
    base, src = ids
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output"), gpt2)
    ex = Executor(im.plan)
    _, out, collected = ex.forward(gpt2, {"input_ids": base}, [{"input_ids": src}], {"sources->base": 3})
    assert collected == []
    assert torch.equal(out.logits, im({"input_ids": base}, [{"input_ids": src}], {"sources->base": 3})[1].logits)
    with pytest.raises(pv.LocationError, match="out of range"):
        ex.forward(gpt2, {"input_ids": base}, [{"input_ids": src}], {"sources->base": 99})


def test_call_time_source_representations_must_be_floating_tensors(gpt2):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    x = torch.randint(0, 100, (2, 5))
    for bad in (torch.ones(64, dtype=torch.long), torch.ones(64, dtype=torch.bool), torch.ones(64, dtype=torch.cfloat)):
        with pytest.raises(pv.ShapeError, match=rf"source_representations\[0\] must be a floating-point tensor, got dtype {bad.dtype}"):
            im(x, source_representations=bad, unit_locations={"base": 1})
    with pytest.raises(pv.ShapeError, match=r"source_representations\[0\] is a 0-d tensor"):
        im(x, source_representations=torch.tensor(1.0), unit_locations={"base": 1})
    _, out = im(x, source_representations=torch.zeros(64, dtype=torch.float64), unit_locations={"base": 1})
    assert torch.equal(out.logits, gpt2(x).logits)  # a float64 zero vector is cast to the site's dtype


@pytest.mark.parametrize("pos", [-1, -2, -6, 0, 5])
def test_every_negative_position_counts_from_the_end(gpt2, pos):
    x = torch.randint(0, 100, (2, 6))
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    _, out = im(x, unit_locations={"base": pos})

    def hook(m, a, o):
        o[:, pos % 6] = 0

    h = gpt2.transformer.h[1].register_forward_hook(hook)
    try:
        expected = gpt2(x).logits
    finally:
        h.remove()
    assert torch.equal(out.logits, expected)
    # the same position given per example (index tensors) agrees
    _, out2 = im(x, unit_locations={"base": [[[pos], [pos]]]})
    assert torch.equal(out2.logits, expected)


@pytest.mark.parametrize("bad", [[[1.0], [2]], [[True], [1]], torch.tensor([[1.5], [2.0]]), torch.tensor([[True], [False]])])
def test_float_and_bool_positions_are_refused_not_truncated(gpt2, bad):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    with pytest.raises(pv.LocationError, match="position indices must be"):
        im(torch.randint(0, 100, (2, 6)), unit_locations={"base": [bad]})


def test_collect_returns_a_copy_of_the_units_not_a_view():
    from tiny_models import build_tiny_model, example_inputs

    # Falcon (parallel_attn) adds attention into the MLP's output tensor in place after the hook.
    model = build_tiny_model("falcon")
    inputs = example_inputs("falcon")
    seen = {}

    def keep(m, a, o):
        seen["mlp"] = o.clone()  # returns None: the model's own output tensor goes on

    h = model.transformer.h[0].mlp.register_forward_hook(keep)
    try:
        model(**inputs)
    finally:
        h.remove()
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "mlp_output", intervention_type="collect"), model)
    (_, collected), _ = im(inputs, unit_locations={"base": -1})
    assert torch.equal(collected[0], seen["mlp"][:, -1:])
    # only the collected units are held, not the whole [batch, seq, width] activation
    assert collected[0].untyped_storage().nbytes() == collected[0].numel() * collected[0].element_size()


def test_generate_refuses_attention_masks_other_than_zero_and_one(gpt2):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    ids = torch.randint(1, 100, (2, 5))
    for mask in (torch.tensor([[0, 1, 1, 1, 2], [1, 1, 1, 1, 1]]), torch.full((2, 5), 0.5)):
        with pytest.raises(pv.ShapeError, match=r"attention_mask holds \[(2|0\.5)\]; accepted: 0 \(padding\) and 1"):
            im.generate({"input_ids": ids, "attention_mask": mask}, max_new_tokens=2, do_sample=False)


def test_generate_with_an_absurd_max_new_tokens_fails_fast_at_the_position_limit(gpt2):
    # n_positions=64: planning 10**9 columns used to run out of time and memory before generating
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    ids = torch.randint(1, 100, (1, 5))
    with pytest.raises(pv.ConfigError, match=r"max_new_tokens=1000000000 \(planned up to the model's 64 positions\)"):
        im.generate({"input_ids": ids}, max_new_tokens=10**9, do_sample=False, eos_token_id=None)
    with pytest.raises(pv.ConfigError, match="max_new_tokens must be a positive int"):
        im.generate({"input_ids": ids}, max_new_tokens=True)
