"""Codebook features: CodebookLayer, wrap_codebook, CodeInfo and CodebookIntervention.

Every numeric check is against a direct computation written here with plain tensor ops
(per-group loops, argsort instead of topk) and hand-written hooks on module paths.
"""

import copy
import math

import pytest
import torch
from conftest import make_gpt2
from tiny_models import build_tiny_model, example_inputs

import pyvene_like as pv
from pyvene_like.codebook import (
    CodebookLayer,
    CodeInfo,
    code_intervention_config,
    get_codebooks,
    parse_code_infos,
    unwrap_codebook,
    wrap_codebook,
)

GREEDY = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)


# -- the direct computation -------------------------------------------------------------------
def direct_codebook(x, layer, forced=None, mode="replace"):
    """Layer-norm -> scores -> best k -> mean of codes, one group at a time.

    ``forced`` {group: [codes]}: in replace mode the group's best ``k - m`` other codes plus the
    forced ones, in append mode its best ``k`` other codes plus the forced ones."""
    forced = forced or {}
    G, N, d = layer.codes.shape
    k = layer.k
    outs = []
    for g in range(G):
        xg = x[..., g * d:(g + 1) * d]
        if layer.layer_norm:
            mu = xg.mean(-1, keepdim=True)
            var = xg.var(-1, unbiased=False, keepdim=True)
            xg = (xg - mu) / torch.sqrt(var + layer.eps) * layer.ln_weight[g] + layer.ln_bias[g]
        C = layer.codes[g]
        if layer.similarity == "inner_product":
            s = xg @ C.T
        elif layer.similarity == "cosine":
            s = (xg / xg.norm(dim=-1, keepdim=True)) @ (C / C.norm(dim=-1, keepdim=True)).T
        else:
            s = -((xg.unsqueeze(-2) - C) ** 2).sum(-1).sqrt()
        order = s.argsort(dim=-1, descending=True).reshape(-1, N).tolist()
        fg = forced.get(g, [])
        keep = k - len(fg) if mode == "replace" else k
        rows = []
        for o in order:
            chosen = [c for c in o if c not in fg][:keep] + list(fg)
            rows.append(C[chosen].mean(0))
        outs.append(torch.stack(rows).reshape(*x.shape[:-1], d))
    return torch.cat(outs, -1)


def _layer(sim="inner_product", groups=2, k=3, num_codes=16, ln=True, seed=0):
    layer = CodebookLayer(8 * groups, num_codes, k, groups, similarity=sim, layer_norm=ln,
                          generator=torch.Generator().manual_seed(seed))
    if ln:  # non-trivial layer-norm parameters
        with torch.no_grad():
            layer.ln_weight.uniform_(0.5, 1.5)
            layer.ln_bias.uniform_(-0.2, 0.2)
    return layer


# -- CodebookLayer ------------------------------------------------------------------------------
@pytest.mark.parametrize("sim", ["inner_product", "cosine", "euclidean"])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("ln", [True, False])
def test_layer_matches_direct_topk(sim, groups, ln):
    layer = _layer(sim, groups, ln=ln)
    x = torch.randn(3, 5, layer.dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), direct_codebook(x, layer), rtol=1e-5, atol=1e-6)


def test_layer_selects_the_k_best_codes_in_order():
    layer = _layer("inner_product", groups=2, k=3)
    x = torch.randn(2, 4, layer.dim)
    with layer.recording() as rec:
        layer(x)
    ids = rec[0]  # [2, 4, G, k]
    assert ids.shape == (2, 4, 2, 3)
    xg = layer.normalize(x)
    s = torch.einsum("btgd,gnd->btgn", xg, layer.codes)
    best = s.argsort(-1, descending=True)[..., :3]
    assert torch.equal(ids, best)
    assert not layer._recorders  # the recording ends with the block


@pytest.mark.parametrize("groups", [1, 4])
def test_straight_through_gradients(groups):
    layer = _layer("inner_product", groups, k=2)
    x = torch.randn(2, 3, layer.dim, requires_grad=True)
    w = torch.randn(2, 3, layer.dim)
    (layer(x) * w).sum().backward()

    # Input: the gradient goes to the layer-normed input unchanged (straight through).
    x2 = x.detach().clone().requires_grad_(True)
    xg = torch.nn.functional.layer_norm(x2.view(2, 3, groups, -1), (layer.group_dim,), eps=layer.eps)
    xg = xg * layer.ln_weight.detach() + layer.ln_bias.detach()
    (xg.reshape(2, 3, -1) * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)

    # Codes: each selected code gets w / k of its group chunk.
    with torch.no_grad(), layer.recording() as rec:
        layer(x)
    ids = rec[0]
    expected = torch.zeros_like(layer.codes)
    d = layer.group_dim
    for b in range(2):
        for t in range(3):
            for g in range(groups):
                for c in ids[b, t, g].tolist():
                    expected[g, c] += w[b, t, g * d:(g + 1) * d] / layer.k
    torch.testing.assert_close(layer.codes.grad, expected)
    # Layer-norm parameters learn through the straight-through path too.
    assert layer.ln_weight.grad is not None and layer.ln_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_forced_codes_match_direct(mode):
    layer = _layer("cosine", groups=4, k=3)
    forced = {1: [5, 9], 3: [0]}
    x = torch.randn(2, 6, layer.dim)
    with torch.no_grad():
        got = layer(x, layer.force(forced, mode))
        torch.testing.assert_close(got, direct_codebook(x, layer, forced, mode), rtol=1e-5, atol=1e-6)
        # Groups without forced codes are untouched.
        plain = layer(x)
        torch.testing.assert_close(got[..., :8], plain[..., :8])
        torch.testing.assert_close(got[..., 16:24], plain[..., 16:24])


def test_forced_code_already_selected_is_not_counted_twice():
    layer = _layer("inner_product", groups=1, k=3)
    x = torch.randn(1, 1, layer.dim)
    with torch.no_grad(), layer.recording() as rec:
        layer(x)
        top = rec[0][0, 0, 0].tolist()
        # Forcing the best code keeps the selection's set: the output does not change.
        torch.testing.assert_close(layer(x, layer.force([top[0]])), layer(x))
        torch.testing.assert_close(layer(x, layer.force([top[0]], "append")),
                                   direct_codebook(x, layer, {0: [top[0]]}, "append"))


def test_layer_errors():
    with pytest.raises(pv.ConfigError, match="similarity 'dot' is not known"):
        CodebookLayer(8, 4, similarity="dot")
    with pytest.raises(pv.ConfigError, match="k=5 is larger than num_codes=4"):
        CodebookLayer(8, 4, k=5)
    with pytest.raises(pv.ConfigError, match="num_groups=3 does not divide the width 8"):
        CodebookLayer(8, 4, num_groups=3)
    with pytest.raises(pv.ConfigError, match="num_codes must be a positive int, got 0"):
        CodebookLayer(8, 0)
    layer = _layer(groups=2, k=2, num_codes=16)
    with pytest.raises(pv.ShapeError, match="input width is 7, but the codebook was built for width 16"):
        layer(torch.randn(1, 7))
    with pytest.raises(pv.ConfigError, match=r"code 16 .* num_codes=16 \(accepted: 0..15\)"):
        layer.force({0: [16]})
    with pytest.raises(pv.ConfigError, match=r"head 2 is past .* 2 heads \(accepted: 0..1\)"):
        layer.force({2: [1]})
    with pytest.raises(pv.ConfigError, match="at most k codes per head"):
        layer.force({0: [1, 2, 3]})
    with pytest.raises(pv.ConfigError, match="has 2 heads; name the head"):
        layer.force([1])
    with pytest.raises(pv.ConfigError, match="mode 'swap' is not a way to force codes"):
        layer.force({0: [1]}, "swap")


# -- wrap_codebook --------------------------------------------------------------------------------
def _direct_hooks(model, specs):
    """Hand-written hooks: ``specs`` [(module path, io, layer, columns or None)] apply the direct
    computation with ``layer``'s parameters. Returns the handles."""
    handles = []
    for path, io, layer, cols in specs:
        module = model.get_submodule(path)

        def apply(x, layer=layer, cols=cols):
            with torch.no_grad():
                if cols is None:
                    return direct_codebook(x, layer)
                x = x.clone()
                x[..., cols] = direct_codebook(x[..., cols], layer)
                return x

        if io == "input":
            handles.append(module.register_forward_pre_hook(lambda m, a, f=apply: (f(a[0]), *a[1:])))
        else:
            def post(m, a, out, f=apply):
                if isinstance(out, tuple):
                    return (f(out[0]), *out[1:])
                return f(out)

            handles.append(module.register_forward_hook(post))
    return handles


GPT2_SITES = [  # (layer, component) -> (module path, io, columns)
    ((0, "head_attention_value_output"), ("transformer.h.0.attn.c_proj", "input", None)),
    ((1, "attention_output"), ("transformer.h.1.attn", "output", None)),
    ((0, "mlp_output"), ("transformer.h.0.mlp", "output", None)),
    ((1, "block_output"), ("transformer.h.1", "output", None)),
    ((1, "head_value_output"), ("transformer.h.1.attn.c_attn", "output", slice(64, 96))),
]


def test_wrapped_gpt2_equals_direct_computation():
    model = build_tiny_model("gpt2")
    plain = copy.deepcopy(model)
    inputs = example_inputs("gpt2", batch=2, seq=6)
    wrap_codebook(model, [s for s, _ in GPT2_SITES], num_codes=24, k=3, seed=0)
    cbs = get_codebooks(model)
    assert cbs.names() == [f"layer_{i}.{c}" for (i, c), _ in GPT2_SITES]
    assert cbs.at(0, "head_attention_value_output").num_groups == 4  # one codebook per head
    assert cbs.at(1, "head_value_output").dim == 32  # the value part of the fused c_attn
    specs = [(p, io, cbs.at(*s), cols) for s, (p, io, cols) in GPT2_SITES]
    handles = _direct_hooks(plain, specs)
    try:
        with torch.no_grad():
            expected = plain(**inputs).logits
            got = model(**inputs).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The codebooks are part of the model: state_dict, parameters.
    assert "codebooks.layer_0-head_attention_value_output.codes" in model.state_dict()


def test_wrapped_llama_equals_direct_and_unwraps_exactly():
    model = build_tiny_model("llama")
    plain = copy.deepcopy(model)
    inputs = example_inputs("llama", batch=2, seq=6)
    with torch.no_grad():
        before = model(**inputs).logits
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    wrap_codebook(model, ["head_attention_value_output", "mlp_output"], num_codes=16, k=2,
                  similarity="euclidean", layers=[1], seed=1)
    cbs = get_codebooks(model)
    assert cbs.names() == ["layer_1.head_attention_value_output", "layer_1.mlp_output"]
    handles = _direct_hooks(plain, [
        ("model.layers.1.self_attn.o_proj", "input", cbs.at(1, "head_attention_value_output"), None),
        ("model.layers.1.mlp", "output", cbs.at(1, "mlp_output"), None),
    ])
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, plain(**inputs).logits, rtol=1e-5, atol=1e-5)
    finally:
        for h in handles:
            h.remove()
    unwrap_codebook(model)
    assert not hasattr(model, "codebooks")
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == n_hooks
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_wrapped_model_generates_same_with_and_without_cache(family):
    model = build_tiny_model(family)
    wrap_codebook(model, ["head_attention_value_output"], num_codes=16, k=2, seed=0)
    inputs = example_inputs(family, batch=2, seq=5)
    a = model.generate(**inputs, use_cache=True, **GREEDY)
    b = model.generate(**inputs, use_cache=False, **GREEDY)
    assert torch.equal(a, b)


def test_wrap_errors():
    model = make_gpt2(n_layer=2)
    with pytest.raises(pv.SiteError, match="component 'mlp_out' is not known"):
        wrap_codebook(model, [(0, "mlp_out")], num_codes=8)
    with pytest.raises(pv.SiteError, match="layer 5 is out of range"):
        wrap_codebook(model, [(5, "mlp_output")], num_codes=8)
    with pytest.raises(pv.ConfigError, match="sites: entry 3 is not accepted"):
        wrap_codebook(model, [3], num_codes=8)
    with pytest.raises(pv.ConfigError, match="k=9 is larger than num_codes=8"):
        wrap_codebook(model, ["mlp_output"], num_codes=8, k=9)
    with pytest.raises(pv.ConfigError, match="already has a codebook"):
        wrap_codebook(model, [(0, "head_attention_value_output"), (0, "attention_value_output")], num_codes=8)
    assert not hasattr(model, "codebooks")  # a failed wrap changes nothing
    with pytest.raises(pv.SiteError, match="has no codebooks"):
        unwrap_codebook(model)
    wrap_codebook(model, [(0, "mlp_output")], num_codes=8)
    with pytest.raises(pv.SiteError, match=r"no codebook at layer 1, component 'mlp_output'.*'layer_0.mlp_output'"):
        get_codebooks(model).at(1, "mlp_output")
    with pytest.raises(pv.ConfigError, match="already has a codebook"):
        wrap_codebook(model, [(0, "mlp_output")], num_codes=8)
    unwrap_codebook(model)


# -- CodeInfo ----------------------------------------------------------------------------------
def test_code_info_parser():
    text = """
    Code: 4670, Layer: 0, Head: 13
    code: 17640,layer: 0, head: 13   # a comment
    Code: 5, Layer: 2, Head: None, Site: mlp_output
    """
    infos = parse_code_infos(text, site="head_attention_value_output")
    assert infos == [
        CodeInfo(4670, 0, 13, "head_attention_value_output"),
        CodeInfo(17640, 0, 13, "head_attention_value_output"),
        CodeInfo(5, 2, None, "mlp_output"),
    ]
    assert str(infos[0]) == "Code: 4670, Layer: 0, Head: 13, Site: head_attention_value_output"
    assert CodeInfo.from_str(str(infos[2])) == infos[2]
    with pytest.raises(pv.ConfigError, match="line 2: .*key 'heat' is not known.*Did you mean 'head'"):
        parse_code_infos("Code: 1, Layer: 0\nCode: 1, Layer: 0, Heat: 3")
    with pytest.raises(pv.ConfigError, match="'Layer' is missing"):
        CodeInfo.from_str("Code: 1, Head: 3")
    with pytest.raises(pv.ConfigError, match="Code 'x1' is not a non-negative integer"):
        CodeInfo.from_str("Code: x1, Layer: 0")
    with pytest.raises(pv.ConfigError, match="CodeInfo.code must be a non-negative int, got -1"):
        CodeInfo(-1, 0)
    reps = code_intervention_config(infos)
    assert [(r.layer, r.component, r.intervention_kwargs["codes"]) for r in reps] == [
        (0, "attention_value_output", [[13, 4670], [13, 17640]]),
        (2, "mlp_output", [[0, 5]]),
    ]
    with pytest.raises(pv.ConfigError, match="names no site"):
        code_intervention_config([CodeInfo(1, 0, 2)])


# -- CodebookIntervention -----------------------------------------------------------------------
@pytest.fixture
def wrapped_gpt2():
    model = build_tiny_model("gpt2")
    plain = copy.deepcopy(model)
    wrap_codebook(model, [(0, "head_attention_value_output"), (1, "mlp_output")], num_codes=24, k=3, seed=0)
    return model, plain


def _codes_config(**kw):
    return pv.RepresentationConfig(0, "attention_value_output", intervention_type="codebook",
                                   intervention_kwargs={"codes": [[1, 7], [1, 11], [3, 2]], **kw})


@pytest.mark.parametrize("mode", ["replace", "append"])
@pytest.mark.parametrize("position", [None, 3])
def test_intervention_forces_codes_like_direct(wrapped_gpt2, mode, position):
    model, plain = wrapped_gpt2
    inputs = example_inputs("gpt2", batch=2, seq=6)
    im = pv.IntervenableModel(_codes_config(mode=mode), model)
    cbs = get_codebooks(model)
    head_cb, mlp_cb = cbs.at(0, "head_attention_value_output"), cbs.at(1, "mlp_output")
    forced = {1: [7, 11], 3: [2]}

    def head_hook(m, args):
        x = args[0]
        with torch.no_grad():
            y = direct_codebook(x, head_cb)
            f = direct_codebook(x, head_cb, forced, mode)
            if position is None:
                y = f
            else:
                y[:, position] = f[:, position]
        return (y,)

    handles = [plain.get_submodule("transformer.h.0.attn.c_proj").register_forward_pre_hook(head_hook)]
    handles += _direct_hooks(plain, [("transformer.h.1.mlp", "output", mlp_cb, None)])
    try:
        with torch.no_grad():
            expected = plain(**inputs).logits
            locs = None if position is None else {"base": position}
            _, got = im(inputs, unit_locations=locs)
            unforced = model(**inputs).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got.logits, unforced)
    if position is not None:  # positions before the forced one are untouched
        torch.testing.assert_close(got.logits[:, :position], unforced[:, :position])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_with_forced_codes_same_with_and_without_cache(family):
    model = build_tiny_model(family)
    wrap_codebook(model, ["head_attention_value_output"], num_codes=16, k=2, seed=0)
    infos = parse_code_infos("Code: 3, Layer: 0, Head: 1\nCode: 9, Layer: 1, Head: 2",
                             site="head_attention_value_output")
    im = pv.IntervenableModel(code_intervention_config(infos), model)
    inputs = example_inputs(family, batch=2, seq=5)
    _, a = im.generate(inputs, timesteps="all", use_cache=True, **GREEDY)
    _, b = im.generate(inputs, timesteps="all", use_cache=False, **GREEDY)
    assert torch.equal(a, b)
    # Generation with codes forced everywhere is the step-by-step argmax of the forced forward.
    seq = inputs["input_ids"]
    for _ in range(GREEDY["max_new_tokens"]):
        _, out = im({"input_ids": seq})
        seq = torch.cat([seq, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(a, seq)


def test_intervention_hub_round_trip(wrapped_gpt2, tmp_path):
    model, _ = wrapped_gpt2
    inputs = example_inputs("gpt2", batch=2, seq=6)
    im = pv.IntervenableModel(_codes_config(mode="append"), model)
    im.save_pretrained(tmp_path / "codes")
    loaded = pv.IntervenableModel.from_pretrained(tmp_path / "codes", model)
    iv = loaded.interventions[0]
    assert isinstance(iv, pv.CodebookIntervention)
    assert iv.codes == [[1, 7], [1, 11], [3, 2]] and iv.mode == "append"
    assert iv.codebook is get_codebooks(model).at(0, "head_attention_value_output")
    with torch.no_grad():
        assert torch.equal(im(inputs)[1].logits, loaded(inputs)[1].logits)


def test_intervention_errors(wrapped_gpt2):
    model, plain = wrapped_gpt2

    def build(codes, layer=0, component="attention_value_output", unit="pos", on=model, **kw):
        rep = pv.RepresentationConfig(layer, component, unit, intervention_type="codebook",
                                      intervention_kwargs={"codes": codes, **kw})
        return pv.IntervenableModel(rep, on)

    with pytest.raises(pv.ConfigError, match=r"code 24 \(head 1\) is not a code .* num_codes=24 \(accepted: 0..23\)"):
        build([[1, 24]])
    with pytest.raises(pv.ConfigError, match=r"head 4 is past the codebook layer_0.head_attention_value_output which has 4 heads \(accepted: 0..3\)"):
        build([[4, 1]])
    with pytest.raises(pv.SiteError, match=r"no codebook at layer 1, component 'attention_value_output'.*'layer_0.head_attention_value_output', 'layer_1.mlp_output'"):
        build([[0, 1]], layer=1)
    with pytest.raises(pv.SiteError, match="GPT2LMHeadModel has no codebooks"):
        build([[0, 1]], on=plain)
    with pytest.raises(pv.ConfigError, match="takes unit 'pos'.*'attention_value_output'"):
        build([[0, 1]], component="head_attention_value_output", unit="h")
    with pytest.raises(pv.ConfigError, match="code 5 names no head, but the codebook .* has 4 heads"):
        build([5])
    with pytest.raises(pv.ConfigError, match="at most k codes per head"):
        build({0: [1, 2, 3, 4]})
    with pytest.raises(pv.ConfigError, match="mode 'swap' is not accepted"):
        build([[0, 1]], mode="swap")
    with pytest.raises(pv.ConfigError, match="codes must be a list of codes"):
        build("4670")
    # One-group codebooks take plain code lists.
    im = build([3, 4], layer=1, component="mlp_output")
    assert im.interventions[0].codebook.num_groups == 1
    with pytest.raises(pv.ConfigError, match="subspaces: .* does not take subspaces"):
        im(example_inputs("gpt2"), subspaces=[[0]])


def test_forward_gradients_flow_through_codebooks(wrapped_gpt2):
    model, _ = wrapped_gpt2
    cb = get_codebooks(model).at(1, "mlp_output")
    out = model(**example_inputs("gpt2", batch=1, seq=4)).logits
    out.sum().backward()
    assert cb.codes.grad is not None and math.isfinite(float(cb.codes.grad.abs().sum()))
    # The model's own weights below the codebook get gradients through the straight-through path.
    assert model.transformer.h[0].mlp.c_fc.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_generate_forced_codes_on_a_left_padded_batch():
    model = build_tiny_model("llama")
    wrap_codebook(model, ["head_attention_value_output"], num_codes=16, k=2, seed=0)
    im = pv.IntervenableModel(pv.RepresentationConfig(
        1, "attention_value_output", intervention_type="codebook",
        intervention_kwargs={"codes": [[0, 3], [2, 5]]}), model)
    ids = example_inputs("llama", batch=2, seq=6)["input_ids"]
    padded = {"input_ids": torch.cat([torch.zeros(1, 2, dtype=torch.long), ids[:1, :4]], 1).repeat(2, 1),
              "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])}
    padded["input_ids"][1] = ids[1]
    _, both = im.generate(padded, timesteps="all", **GREEDY)
    _, first = im.generate({"input_ids": ids[:1, :4]}, timesteps="all", **GREEDY)
    _, second = im.generate({"input_ids": ids[1:]}, timesteps="all", **GREEDY)
    assert torch.equal(both[0, 2:], first[0]) and torch.equal(both[1], second[0])


# -- load_codebooks is all or nothing --------------------------------------------------------------
def _model_state(model):
    """Everything a failed load must leave as it was: hooks, parameters, flags, modes."""
    hooks = {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for name, m in model.named_modules()}
    params = {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    return hooks, params, modes


def _assert_same_state(model, before, out_before, x):
    hooks, params, modes = _model_state(model)
    assert hooks == before[0] and modes == before[2]
    assert params.keys() == before[1].keys()
    assert all(torch.equal(p, before[1][k][0]) and rg == before[1][k][1] for k, (p, rg) in params.items())
    assert torch.equal(model(x).logits, out_before)


def _two_site_save(folder):
    from pyvene_like.codebook import save_codebooks

    model = make_gpt2(0, n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    wrap_codebook(model, [(0, "head_attention_value_output")], num_codes=8, k=2, seed=1)
    wrap_codebook(model, [(1, "mlp_output")], num_codes=8, k=1, num_codebooks=2, layer_norm=False, seed=2)
    return save_codebooks(model, folder)


def _rewrite(folder, edit_doc=None, edit_tensors=None):
    import json

    from safetensors.torch import load_file

    from pyvene_like.serialization import save_tensors

    doc = json.loads((folder / "codebooks.json").read_text())
    if edit_tensors is not None:
        tensors = load_file(str(folder / "codebooks.safetensors"))
        edit_tensors(tensors)
        doc["weights"]["sha256"] = save_tensors(tensors, folder / "codebooks.safetensors")
    if edit_doc is not None:
        edit_doc(doc)
    (folder / "codebooks.json").write_text(json.dumps(doc))


def _entry(i, **kw):
    def edit(doc):
        doc["codebooks"][i].update(kw)
    return edit


_BAD_LOADS = {
    "weights missing": (lambda f: (f / "codebooks.safetensors").unlink(), "codebooks.safetensors is missing"),
    "json corrupt": (lambda f: (f / "codebooks.json").write_text("{not json"), "not valid JSON"),
    "weights corrupt": (lambda f: (f / "codebooks.safetensors").write_bytes(b"garbage"),
                        "not a readable safetensors file"),
    "num_codes a string": (lambda f: _rewrite(f, _entry(1, num_codes="8")),
                           r"codebooks\[1\] field 'num_codes' must be a positive int, got '8'"),
    "layer_norm missing": (lambda f: _rewrite(f, lambda d: d["codebooks"][0].pop("layer_norm")),
                           r"codebooks\[0\] field 'layer_norm' must be true or false, got None"),
    "entry not an object": (lambda f: _rewrite(f, lambda d: d["codebooks"].append(3)),
                            r"codebooks\[2\] must be an object"),
    "name not its site": (lambda f: _rewrite(f, _entry(1, name="layer_0.mlp_output")),
                          r"codebooks\[1\] is named 'layer_0.mlp_output', but its site .* is named 'layer_1.mlp_output'"),
    "site twice": (lambda f: _rewrite(f, lambda d: d["codebooks"].append(dict(d["codebooks"][1]))),
                   r"codebooks\[2\]: site 'layer_1.mlp_output' appears twice"),
    "unknown component": (lambda f: _rewrite(f, _entry(1, component="mlp_outptu", name="layer_1.mlp_outptu")),
                          r"codebook 'layer_1.mlp_outptu' sits at layer 1, component 'mlp_outptu', which "
                          r"GPT2LMHeadModel does not have: .*Did you mean one of 'mlp_output'"),
    "layer out of range": (lambda f: _rewrite(f, _entry(1, layer=5, name="layer_5.mlp_output")),
                           r"which GPT2LMHeadModel does not have: layer 5 is out of range .* \(accepted: 0\.\.1\)"),
    "dim differs": (lambda f: _rewrite(f, _entry(1, dim=64)),
                    r"saved with dim=64, but its site transformer.h.1.mlp \(output\) on this model gives dim=32"),
    "heads differ": (lambda f: _rewrite(f, _entry(0, num_groups=4)),
                     r"saved with num_groups=4, but its site .* gives num_groups=2"),
    "same tensor twice": (lambda f: _rewrite(f, lambda d: d["codebooks"].append(
        dict(d["codebooks"][0], component="attention_value_output", name="layer_0.attention_value_output",
             num_groups=1))),
        r"codebooks 'layer_0.head_attention_value_output' and 'layer_0.attention_value_output' sit on the "
        r"same tensor \(transformer.h.0.attn.c_proj \(input\)\)"),
    "k above num_codes": (lambda f: _rewrite(f, _entry(1, k=9)),
                          r"codebook 'layer_1.mlp_output': k=9 is larger than num_codes=8"),
    "tensor missing": (lambda f: _rewrite(f, edit_tensors=lambda t: t.pop("layer_1.mlp_output.codes")),
                       r"tensor 'layer_1.mlp_output.codes' is missing"),
    "tensor extra": (lambda f: _rewrite(f, edit_tensors=lambda t: t.update({"layer_1.mlp_output.ln_bias":
                                                                             torch.zeros(2, 16)})),
                     r"tensors \['layer_1.mlp_output.ln_bias'\] belong to no codebook in codebooks.json"),
    "tensor mis-shaped": (lambda f: _rewrite(f, edit_tensors=lambda t: t.update({"layer_1.mlp_output.codes":
                                                                                  torch.zeros(2, 8, 17)})),
                          r"tensor 'layer_1.mlp_output.codes' has shape \(2, 8, 17\), the codebook expects "
                          r"\(2, 8, 16\)"),
    "tensor not float": (lambda f: _rewrite(f, edit_tensors=lambda t: t.update({"layer_1.mlp_output.codes":
                                                                                 torch.zeros(2, 8, 16, dtype=torch.long)})),
                         r"tensor 'layer_1.mlp_output.codes' has dtype torch.int64; accepted: a floating-point"),
}


@pytest.mark.parametrize("case", sorted(_BAD_LOADS))
def test_failed_load_leaves_an_unwrapped_model_as_it_was(tmp_path, case):
    from pyvene_like.codebook import load_codebooks

    folder = _two_site_save(tmp_path / "cb")
    damage, match = _BAD_LOADS[case]
    damage(folder)
    model = make_gpt2(0, n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    model.transformer.wpe.weight.requires_grad_(False)
    model.lm_head.train()  # a mode that differs from its parent's must stay so (no dropout there)
    x = torch.randint(0, 50, (2, 6))
    before, out_before = _model_state(model), model(x).logits
    rng = torch.random.get_rng_state()
    with pytest.raises(pv.LoadError, match=match):
        load_codebooks(model, folder)
    assert not hasattr(model, "codebooks")
    _assert_same_state(model, before, out_before, x)
    assert torch.equal(torch.random.get_rng_state(), rng)


@pytest.mark.parametrize("case", ["tensor mis-shaped", "tensor missing", "tensor not float"])
def test_failed_load_leaves_a_wrapped_models_codebooks_as_they_were(tmp_path, case):
    from pyvene_like.codebook import load_codebooks

    folder = _two_site_save(tmp_path / "cb")
    _BAD_LOADS[case][0](folder)
    model = make_gpt2(0, n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    wrap_codebook(model, [(0, "head_attention_value_output")], num_codes=8, k=2, seed=7)
    wrap_codebook(model, [(1, "mlp_output")], num_codes=8, k=1, num_codebooks=2, layer_norm=False, seed=8)
    x = torch.randint(0, 50, (2, 6))
    before, out_before = _model_state(model), model(x).logits
    with pytest.raises(pv.LoadError, match=_BAD_LOADS[case][1]):
        load_codebooks(model, folder)
    # the first codebook's tensors were fine, but nothing is copied unless everything is
    _assert_same_state(model, before, out_before, x)


def test_load_onto_unwrapped_model_keeps_rng_and_saved_eps(tmp_path):
    from pyvene_like.codebook import load_codebooks

    folder = _two_site_save(tmp_path / "cb")
    _rewrite(folder, _entry(1, eps=1e-3))
    model = make_gpt2(0, n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    rng = torch.random.get_rng_state()
    load_codebooks(model, folder)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert get_codebooks(model).at(1, "mlp_output").eps == 1e-3
    assert sorted(get_codebooks(model).names()) == ["layer_0.head_attention_value_output", "layer_1.mlp_output"]


def test_a_failure_while_wrapping_unwraps_again(tmp_path, monkeypatch):
    """Past the checks, an error (here: the second wrap) still leaves the model as it was."""
    import pyvene_like.codebook.saving as saving

    folder = _two_site_save(tmp_path / "cb")
    model = make_gpt2(0, n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    x = torch.randint(0, 50, (2, 6))
    before, out_before = _model_state(model), model(x).logits
    calls = []

    def flaky_wrap(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return wrap_codebook(*args, **kwargs)

    monkeypatch.setattr(saving, "wrap_codebook", flaky_wrap)
    with pytest.raises(RuntimeError, match="out of memory"):
        saving.load_codebooks(model, folder)
    assert len(calls) == 2 and not hasattr(model, "codebooks")
    _assert_same_state(model, before, out_before, x)
