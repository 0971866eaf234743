"""The engine against hand-written hooks on tiny GPT-2 and a plain nn.Module."""

import pytest
import torch
from conftest import TinyMLP
from reference import capture, run_with_edit
from torch import nn

import pyvene_like as pv


def logits(out):
    return out.logits if hasattr(out, "logits") else out


def test_interchange_matches_hand_written_hooks(gpt2, ids):
    base, src = ids
    block = gpt2.transformer.h[2]
    s = capture(gpt2, block, "output", {"input_ids": src})

    def edit(x):
        x[:, 7] = s[:, 3]
        return x

    expected = run_with_edit(gpt2, block, "output", {"input_ids": base}, edit)
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output"), gpt2)
    orig, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": (3, 7)}, output_original_output=True)
    assert torch.equal(out.logits, expected.logits)
    assert torch.equal(orig.logits, gpt2(input_ids=base).logits)
    assert not torch.equal(out.logits, orig.logits)


def test_per_example_positions_and_several_units(gpt2, ids):
    base, src = ids
    block = gpt2.transformer.h[1]
    s = capture(gpt2, block, "output", {"input_ids": src})
    src_pos = [[0, 1], [2, 3], [4, 5]]
    base_pos = [[9, 8], [7, 6], [5, 4]]

    def edit(x):
        for b in range(3):
            for sp, bp in zip(src_pos[b], base_pos[b]):
                x[b, bp] = s[b, sp]
        return x

    expected = run_with_edit(gpt2, block, "output", {"input_ids": base}, edit)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", max_number_of_units=2), gpt2)
    _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": ([src_pos], [base_pos])})
    assert torch.equal(out.logits, expected.logits)


@pytest.mark.parametrize(
    "component,path,io",
    [
        ("block_input", "transformer.h.1", "input"),
        ("attention_input", "transformer.h.1.attn", "input"),
        ("attention_output", "transformer.h.1.attn", "output"),
        ("attention_value_output", "transformer.h.1.attn.c_proj", "input"),
        ("mlp_input", "transformer.h.1.mlp", "input"),
        ("mlp_activation", "transformer.h.1.mlp.act", "output"),
        ("mlp_output", "transformer.h.1.mlp", "output"),
        ("embedding_output", "transformer.wte", "output"),
    ],
)
def test_components_resolve_and_match(gpt2, ids, component, path, io):
    base, src = ids
    module = gpt2.get_submodule(path)
    s = capture(gpt2, module, io, {"input_ids": src})

    def edit(x):
        x[:, 4] = s[:, 4]
        return x

    expected = run_with_edit(gpt2, module, io, {"input_ids": base}, edit)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, component), gpt2)
    assert im.sites[0].path == path and im.sites[0].io == io
    _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": 4})
    assert torch.equal(out.logits, expected.logits)


@pytest.mark.parametrize("part,offset", [("query", 0), ("key", 64), ("value", 128)])
def test_fused_qkv_parts_and_heads(gpt2, ids, part, offset):
    """GPT-2's c_attn is [q | k | v]: head 2 of the key is columns 64+32..64+48."""
    base, src = ids
    c_attn = gpt2.transformer.h[0].attn.c_attn
    s = capture(gpt2, c_attn, "output", {"input_ids": src})
    lo, hi = offset + 2 * 16, offset + 3 * 16

    def edit(x):
        x[:, 5, lo:hi] = s[:, 2, lo:hi]
        return x

    expected = run_with_edit(gpt2, c_attn, "output", {"input_ids": base}, edit)
    im = pv.IntervenableModel(pv.RepresentationConfig(0, f"head_{part}_output", unit="h.pos"), gpt2)
    locs = {"sources->base": ([[[[2]] * 3, [[2]] * 3]], [[[[2]] * 3, [[5]] * 3]])}
    _, out = im({"input_ids": base}, [{"input_ids": src}], locs)
    assert torch.equal(out.logits, expected.logits)

    # the whole part at one position
    def edit_pos(x):
        x[:, 5, offset : offset + 64] = s[:, 2, offset : offset + 64]
        return x

    expected = run_with_edit(gpt2, c_attn, "output", {"input_ids": base}, edit_pos)
    im = pv.IntervenableModel(pv.RepresentationConfig(0, f"{part}_output"), gpt2)
    _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": (2, 5)})
    assert torch.equal(out.logits, expected.logits)


def test_head_unit_all_positions_per_example_heads(gpt2, ids):
    base, src = ids
    c_proj = gpt2.transformer.h[3].attn.c_proj
    s = capture(gpt2, c_proj, "input", {"input_ids": src})
    heads = [[0], [3], [1]]

    def edit(x):
        for b, (h,) in enumerate(heads):
            x[b, :, h * 16 : (h + 1) * 16] = s[b, :, h * 16 : (h + 1) * 16]
        return x

    expected = run_with_edit(gpt2, c_proj, "input", {"input_ids": base}, edit)
    im = pv.IntervenableModel(pv.RepresentationConfig(3, "head_attention_value_output", unit="h"), gpt2)
    _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": ([heads], [heads])})
    assert torch.equal(out.logits, expected.logits)


def test_addition_subtraction_zero_collect(gpt2, ids):
    base, _ = ids
    block = gpt2.transformer.h[1]
    vec = torch.randn(64)
    for name, fn in [("addition", lambda x: x + vec), ("subtraction", lambda x: x - vec)]:
        def edit(x, fn=fn):
            x[:, 3] = fn(x[:, 3])
            return x

        expected = run_with_edit(gpt2, block, "output", {"input_ids": base}, edit)
        im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type=name), gpt2)
        _, out = im({"input_ids": base}, unit_locations={"base": 3}, source_representations=vec)
        assert torch.equal(out.logits, expected.logits), name

    def zero(x):
        x[:, 3] = 0
        return x

    expected = run_with_edit(gpt2, block, "output", {"input_ids": base}, zero)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    _, out = im({"input_ids": base}, unit_locations={"base": 3})
    assert torch.equal(out.logits, expected.logits)

    act = capture(gpt2, block, "output", {"input_ids": base})
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="collect"), gpt2)
    (orig, collected), out = im({"input_ids": base}, unit_locations={"base": [[[2, 3]] * 3]})
    assert orig is None
    assert torch.equal(collected[0], act[:, 2:4])
    assert torch.equal(out.logits, gpt2(input_ids=base).logits)
    res = im({"input_ids": base}, unit_locations={"base": 3}, return_dict=True)
    assert torch.equal(res.collected_activations[0], act[:, 3:4])


def test_skip_noise_lambda(gpt2, ids):
    base, src = ids
    block = gpt2.transformer.h[2]
    inp = capture(gpt2, block, "input", {"input_ids": base})

    def skip(x):
        x[:, 6] = inp[:, 6]
        return x

    expected = run_with_edit(gpt2, block, "output", {"input_ids": base}, skip)
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type="skip"), gpt2)
    _, out = im({"input_ids": base}, unit_locations={"base": 6})
    assert torch.equal(out.logits, expected.logits)

    noisy = pv.IntervenableModel(
        pv.RepresentationConfig(2, "block_output", intervention_type="noise", intervention_kwargs={"noise_level": 0.5, "seed": 7}),
        gpt2,
    )
    noise = torch.randn((3, 1, 64), generator=torch.Generator().manual_seed(7)) * 0.5

    def add_noise(x):
        x[:, 6:7] = x[:, 6:7] + noise
        return x

    expected = run_with_edit(gpt2, block, "output", {"input_ids": base}, add_noise)
    _, a = noisy({"input_ids": base}, unit_locations={"base": 6})
    _, b = noisy({"input_ids": base}, unit_locations={"base": 6})
    assert torch.equal(a.logits, b.logits)
    assert torch.allclose(a.logits, expected.logits, atol=1e-6)

    s = capture(gpt2, block, "output", {"input_ids": src})

    def mix(x):
        x[:, 1] = 0.5 * x[:, 1] + 0.5 * s[:, 1]
        return x

    expected = run_with_edit(gpt2, block, "output", {"input_ids": base}, mix)
    im = pv.IntervenableModel(
        pv.IntervenableConfig([pv.RepresentationConfig(2, "block_output")], intervention_types=lambda b, s: 0.5 * b + 0.5 * s),
        gpt2,
    )
    _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": 1})
    assert torch.allclose(out.logits, expected.logits, atol=1e-6)


def test_subspaces_with_partition(gpt2, ids):
    base, src = ids
    block = gpt2.transformer.h[1]
    s = capture(gpt2, block, "output", {"input_ids": src})

    def edit(x):
        x[0, 2, 16:32] = s[0, 2, 16:32]
        x[1, 2, 0:16] = s[1, 2, 0:16]
        x[1, 2, 48:64] = s[1, 2, 48:64]
        x[2, 2, 48:64] = s[2, 2, 48:64]
        return x

    expected = run_with_edit(gpt2, block, "output", {"input_ids": base}, edit)
    rep = pv.RepresentationConfig(1, "block_output", subspace_partition=[[0, 16], [16, 32], [32, 48], [48, 64]])
    im = pv.IntervenableModel(rep, gpt2)
    _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": 2}, subspaces=[[[1], [0, 3], [3]]])
    assert torch.equal(out.logits, expected.logits)


def test_null_intervention_is_bit_identical(gpt2, ids):
    base, _ = ids
    plain = gpt2(input_ids=base).logits
    for comp in ["block_output", "mlp_activation", "attention_value_output", "query_output"]:
        im = pv.IntervenableModel(pv.RepresentationConfig(1, comp), gpt2)
        # the base as its own source: every value is written back unchanged
        _, out = im({"input_ids": base}, [{"input_ids": base}], {"sources->base": 3})
        assert torch.equal(out.logits, plain), comp
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    _, out = im({"input_ids": base}, unit_locations=None, source_representations=torch.zeros(64))
    assert torch.equal(out.logits, plain)


class Counter:
    def __init__(self, model):
        self.calls = {}
        self.handles = [
            blk.register_forward_hook(lambda m, a, o, i=i: self.calls.__setitem__(i, self.calls.get(i, 0) + 1))
            for i, blk in enumerate(model.transformer.h)
        ]
        self.head = model.lm_head.register_forward_hook(lambda m, a, o: self.calls.__setitem__("head", self.calls.get("head", 0) + 1))

    def close(self):
        for h in self.handles + [self.head]:
            h.remove()


def test_shared_source_runs_once_and_stops_early(gpt2, ids):
    base, src = ids
    reps = [pv.RepresentationConfig(layer, "block_output") for layer in range(3)]
    im = pv.IntervenableModel(reps, gpt2)
    counter = Counter(gpt2)
    try:
        s = {"input_ids": src}
        _, out = im({"input_ids": base}, [s, s, {"input_ids": src.clone()}], {"sources->base": 2})
    finally:
        counter.close()
    # one source pass stopped after layer 2 + one base pass through all 4 layers
    assert counter.calls == {0: 2, 1: 2, 2: 2, 3: 1, "head": 1}
    # the user's own hooks are untouched by ours, and ours are gone
    assert all(len(b._forward_hooks) == 0 and len(b._forward_pre_hooks) == 0 for b in gpt2.transformer.h)

    # and the result equals three independent interchanges by hand
    caps = [capture(gpt2, gpt2.transformer.h[layer], "output", {"input_ids": src}) for layer in range(3)]
    handles = []
    for layer in range(3):
        def post(m, a, o, c=caps[layer]):
            x = o[0].clone() if isinstance(o, tuple) else o.clone()
            x[:, 2] = c[:, 2]
            return (x,) + o[1:] if isinstance(o, tuple) else x
        handles.append(gpt2.transformer.h[layer].register_forward_hook(post))
    try:
        expected = gpt2(input_ids=base).logits
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(out.logits, expected)


def test_group_key_and_distinct_sources(gpt2, ids):
    base, src = ids
    src2 = torch.flip(src, dims=[1])
    reps = [
        pv.RepresentationConfig(0, "block_output", group_key="a"),
        pv.RepresentationConfig(1, "block_output", group_key="b"),
        pv.RepresentationConfig(3, "block_output", group_key="a"),
    ]
    im = pv.IntervenableModel(reps, gpt2)
    c0 = capture(gpt2, gpt2.transformer.h[0], "output", {"input_ids": src})
    c1 = capture(gpt2, gpt2.transformer.h[1], "output", {"input_ids": src2})
    c3 = capture(gpt2, gpt2.transformer.h[3], "output", {"input_ids": src})
    handles = []
    for layer, c in [(0, c0), (1, c1), (3, c3)]:
        def post(m, a, o, c=c):
            x = o[0].clone() if isinstance(o, tuple) else o.clone()
            x[:, 1] = c[:, 1]
            return (x,) + o[1:] if isinstance(o, tuple) else x
        handles.append(gpt2.transformer.h[layer].register_forward_hook(post))
    try:
        expected = gpt2(input_ids=base).logits
    finally:
        for h in handles:
            h.remove()
    _, out = im({"input_ids": base}, [{"input_ids": src}, {"input_ids": src2}], {"sources->base": 1})
    assert torch.equal(out.logits, expected)


def test_serial_mode_chains_streams(gpt2, ids):
    base, src = ids
    src2 = torch.flip(src, dims=[1])
    # intervention 0: source_0 layer 0 pos 1 -> source_1 layer 0 pos 2; intervention 1: source_1 layer 2 pos 2 -> base layer 2 pos 5
    reps = [pv.RepresentationConfig(0, "block_output"), pv.RepresentationConfig(2, "block_output")]
    im = pv.IntervenableModel(pv.IntervenableConfig(reps, mode="serial"), gpt2)
    c0 = capture(gpt2, gpt2.transformer.h[0], "output", {"input_ids": src})

    def e0(x):
        x[:, 2] = c0[:, 1]
        return x

    h = gpt2.transformer.h[0].register_forward_hook(lambda m, a, o: (e0(o[0].clone()),) + o[1:] if isinstance(o, tuple) else e0(o.clone()))
    try:
        c2 = capture(gpt2, gpt2.transformer.h[2], "output", {"input_ids": src2})
    finally:
        h.remove()

    def e2(x):
        x[:, 5] = c2[:, 2]
        return x

    expected = run_with_edit(gpt2, gpt2.transformer.h[2], "output", {"input_ids": base}, e2)
    _, out = im(
        {"input_ids": base},
        [{"input_ids": src}, {"input_ids": src2}],
        {"source_0->source_1": (1, 2), "source_1->base": (2, 5)},
    )
    assert torch.equal(out.logits, expected.logits)


def test_gradients_flow_and_model_untouched_after_error(gpt2, ids):
    base, src = ids
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "mlp_activation"), gpt2)
    with pytest.raises(pv.LocationError, match="position 40 is out of range"):
        im({"input_ids": base}, [{"input_ids": src}], {"sources->base": 40})
    for m in gpt2.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    # training-style call: grads reach an embedding that feeds the base
    emb = gpt2.transformer.wte(base).detach().requires_grad_(True)
    _, out = im({"inputs_embeds": emb}, [{"input_ids": src}], {"sources->base": 2})
    out.logits.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_plain_module_with_2d_activations_and_raw_paths():
    model = TinyMLP()
    x = torch.randn(4, 8)
    s = torch.randn(4, 8)
    src_act = model.layers[0](s)

    def edit(t):
        t = t.clone()
        t[:, :4] = src_act[:, :4]
        return t

    h = model.layers[0].register_forward_hook(lambda m, a, o: edit(o))
    expected = model(x)
    h.remove()
    for comp in ["block_output", "layers.0.output", "layers[{layer}].output"]:
        im = pv.IntervenableModel(pv.RepresentationConfig(0, comp, subspace_partition=[[0, 4], [4, 8]]), model)
        _, out = im(x, [s], {"sources->base": 0}, subspaces=[[0]])
        assert torch.equal(out, expected), comp
    # raw input path
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "layers.2.input", intervention_type="zero"), model)
    _, out = im(x, unit_locations={"base": 0})
    assert torch.equal(out, model.layers[2](torch.zeros(4, 8)))


def test_train_eval_reach_interventions(gpt2):
    im = pv.IntervenableModel([pv.RepresentationConfig(0), pv.RepresentationConfig(1)], gpt2)
    im.train()
    assert all(iv.training for iv in im.interventions)
    im.eval()
    assert not any(iv.training for iv in im.interventions)
    assert im.count_parameters() == 0
    assert im.get_trainable_parameters() == []
    assert "interventions" not in "".join(k for k in im.state_dict() if not k.startswith(("model.", "interventions.")))


def test_site_never_called_is_an_error_not_a_silent_no_op():
    model = TinyMLP()
    model.unused = nn.Linear(8, 8)  # registered, never called by forward
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "unused.output", intervention_type="zero"), model)
    with pytest.raises(pv.ConfigError, match=r"the base pass never reached unused \(output\)"):
        im(torch.randn(2, 8), unit_locations={"base": 0})
    assert not model.unused._forward_hooks


def test_user_hooks_are_kept_and_still_run(gpt2, ids):
    base, src = ids
    calls = []
    block = gpt2.transformer.h[2]
    h1 = block.register_forward_hook(lambda m, a, o: calls.append("post") and None)
    h2 = block.register_forward_pre_hook(lambda m, a: calls.append("pre") and None)
    try:
        im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output"), gpt2)
        im({"input_ids": base}, [{"input_ids": src}], {"sources->base": 1})
        # source pass (stopped right after block 2) and base pass: both ran the user's hooks
        assert calls == ["pre", "post", "pre", "post"]
        assert list(block._forward_hooks) == [h1.id] and list(block._forward_pre_hooks) == [h2.id]
    finally:
        h1.remove()
        h2.remove()


def test_source_representation_dtype_is_cast(gpt2, ids):
    base, _ = ids
    vec = torch.randn(64)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="addition"), gpt2)
    _, a = im({"input_ids": base}, unit_locations={"base": -1}, source_representations=vec)
    _, b = im({"input_ids": base}, unit_locations={"base": -1}, source_representations=vec.double())
    assert torch.equal(a.logits, b.logits)
    assert not torch.equal(a.logits, gpt2(input_ids=base).logits)


def test_intervention_link_key_shares_one_intervention(gpt2):
    reps = [
        pv.RepresentationConfig(0, "block_output", intervention_type="noise", intervention_link_key="n"),
        pv.RepresentationConfig(2, "block_output", intervention_type="noise", intervention_link_key="n"),
        pv.RepresentationConfig(3, "block_output", intervention_type="noise"),
    ]
    im = pv.IntervenableModel(reps, gpt2)
    assert im.interventions[0] is im.interventions[1]
    assert im.interventions[2] is not im.interventions[0]


def test_plain_module_layer_width_is_inferred_for_trainable_interventions():
    model = TinyMLP()
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"), model)
    assert im.sites[0].width == 8 and im.interventions[0].embed_dim == 8
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type="rotated_space"), model)
    assert im.interventions[0].embed_dim == 2
