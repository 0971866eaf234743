"""The family matrix: every component on 17 HF families, checked against hand-written hooks.

The expected module paths and fused-QKV column layouts below are written out by hand from
each family's modeling code, so the test checks introspection as well as the engine.
"""

import pytest
import torch
from reference import capture, run_with_edit
from tiny_models import build_tiny_model, example_inputs

import pyvene_like as pv

# family -> (layer prefix, {component: (path under the layer, io)}, fused qkv spec or None)
# paths starting with "/" are from the model root.
_LLAMA_LIKE = {
    "attention_output": ("self_attn", "output"),
    "attention_value_output": ("self_attn.o_proj", "input"),
    "query_output": ("self_attn.q_proj", "output"),
    "key_output": ("self_attn.k_proj", "output"),
    "value_output": ("self_attn.v_proj", "output"),
    "mlp_input": ("mlp", "input"),
    "mlp_activation": ("mlp.act_fn", "output"),
    "mlp_output": ("mlp", "output"),
    "embedding_output": ("/model.embed_tokens", "output"),
}
EXPECTED = {
    "gpt2": ("transformer.h", {
        "attention_output": ("attn", "output"),
        "attention_value_output": ("attn.c_proj", "input"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/transformer.wte", "output"),
    }, ("attn.c_attn", "contiguous")),
    "gpt_neo": ("transformer.h", {
        "attention_output": ("attn.attention", "output"),
        "attention_value_output": ("attn.attention.out_proj", "input"),
        "query_output": ("attn.attention.q_proj", "output"), "key_output": ("attn.attention.k_proj", "output"),
        "value_output": ("attn.attention.v_proj", "output"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/transformer.wte", "output"),
    }, None),
    "gpt_neox": ("gpt_neox.layers", {
        "attention_output": ("attention", "output"),
        "attention_value_output": ("attention.dense", "input"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/gpt_neox.embed_in", "output"),
    }, ("attention.query_key_value", "per_head")),
    "gptj": ("transformer.h", {
        "attention_output": ("attn", "output"),
        "attention_value_output": ("attn.out_proj", "input"),
        "query_output": ("attn.q_proj", "output"), "key_output": ("attn.k_proj", "output"),
        "value_output": ("attn.v_proj", "output"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/transformer.wte", "output"),
    }, None),
    "llama": ("model.layers", _LLAMA_LIKE, None),
    "mistral": ("model.layers", _LLAMA_LIKE, None),
    "mixtral": ("model.layers", {k: v for k, v in _LLAMA_LIKE.items() if k != "mlp_activation"}, None),
    "gemma": ("model.layers", _LLAMA_LIKE, None),
    "gemma2": ("model.layers", _LLAMA_LIKE, None),
    "qwen2": ("model.layers", _LLAMA_LIKE, None),
    "qwen3": ("model.layers", _LLAMA_LIKE, None),
    "phi3": ("model.layers", {
        "attention_output": ("self_attn", "output"),
        "attention_value_output": ("self_attn.o_proj", "input"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.activation_fn", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/model.embed_tokens", "output"),
    }, ("self_attn.qkv_proj", "contiguous")),
    "opt": ("model.decoder.layers", {
        "attention_output": ("self_attn", "output"),
        "attention_value_output": ("self_attn.out_proj", "input"),
        "query_output": ("self_attn.q_proj", "output"), "key_output": ("self_attn.k_proj", "output"),
        "value_output": ("self_attn.v_proj", "output"),
        "mlp_input": ("fc1", "input"), "mlp_activation": ("activation_fn", "output"), "mlp_output": ("fc2", "output"),
        "embedding_output": ("/model.decoder.embed_tokens", "output"),
    }, None),
    "falcon": ("transformer.h", {
        "attention_output": ("self_attention", "output"),
        "attention_value_output": ("self_attention.dense", "input"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/transformer.word_embeddings", "output"),
    }, ("self_attention.query_key_value", "multi_query")),
    "bloom": ("transformer.h", {
        # Bloom's attention and MLP modules return residual + contribution: the contributions
        # are the outputs of their dense projections.
        "attention_output": ("self_attention.dense", "output"),
        "attention_value_output": ("self_attention.dense", "input"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.gelu_impl", "output"),
        "mlp_output": ("mlp.dense_4h_to_h", "output"),
        "embedding_output": ("/transformer.word_embeddings", "output"),
    }, ("self_attention.query_key_value", "per_head")),
    "bert": ("encoder.layer", {
        # attention.output and output add the residual and layer-norm the sum: the
        # contributions are the outputs of their dense projections.
        "attention_output": ("attention.output.dense", "output"),
        "attention_value_output": ("attention.output.dense", "input"),
        "query_output": ("attention.self.query", "output"), "key_output": ("attention.self.key", "output"),
        "value_output": ("attention.self.value", "output"),
        "mlp_input": ("intermediate", "input"), "mlp_activation": ("intermediate.intermediate_act_fn", "output"),
        "mlp_output": ("output.dense", "output"),
        "embedding_output": ("/embeddings.word_embeddings", "output"),
    }, None),
    "t5": ("decoder.block", {
        "attention_output": ("layer.0.SelfAttention", "output"),
        "attention_value_output": ("layer.0.SelfAttention.o", "input"),
        "query_output": ("layer.0.SelfAttention.q", "output"), "key_output": ("layer.0.SelfAttention.k", "output"),
        "value_output": ("layer.0.SelfAttention.v", "output"),
        "mlp_input": ("layer.2.DenseReluDense", "input"), "mlp_activation": ("layer.2.DenseReluDense.act", "output"),
        "mlp_output": ("layer.2.DenseReluDense", "output"),
        "embedding_output": ("/decoder.embed_tokens", "output"),
    }, None),
}
FAMILIES = sorted(EXPECTED)
LAYER = 1
_MODELS = {}


def model_for(family):
    if family not in _MODELS:
        _MODELS[family] = build_tiny_model(family)
    return _MODELS[family]


def main_out(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def geometry(model):
    cfg = model.config
    h = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", None) or cfg.n_head
    kv = getattr(cfg, "num_key_value_heads", None) or h
    if cfg.model_type == "falcon":
        kv = 1  # the tiny Falcon config is multi-query
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    hd = getattr(cfg, "head_dim", None) or getattr(cfg, "d_kv", None) or hidden // h
    return h, kv, hd


def as3(x, batch=2):
    """OPT runs fc1/fc2 on flattened tokens: [batch * seq, features] -> [batch, seq, features]."""
    return x.view(batch, -1, x.shape[-1]) if x.dim() == 2 else x


def qkv_columns(layout, part, h, kv, hd):
    """Hand-written: which output features of the fused projection hold ``part``, per head."""
    heads = h if part == "q" else kv
    cols = []
    for head in range(heads):
        if layout == "contiguous":  # [q heads | k heads | v heads]
            start = {"q": 0, "k": h * hd, "v": h * hd + kv * hd}[part] + head * hd
        elif layout == "per_head":  # per head: [q_h k_h v_h]
            start = head * 3 * hd + {"q": 0, "k": hd, "v": 2 * hd}[part]
        elif layout == "multi_query":  # [q heads | one k | one v]
            start = {"q": head * hd, "k": h * hd, "v": h * hd + hd}[part]
        cols.append(list(range(start, start + hd)))
    return cols


def _cases():
    for fam in FAMILIES:
        prefix, comps, fused = EXPECTED[fam]
        names = ["block_input", "block_output", *comps]
        if fused:
            names += ["query_output", "key_output", "value_output"]
        for c in names:
            yield fam, c


def _locate(family, component):
    prefix, comps, fused = EXPECTED[family]
    if component in ("block_input", "block_output"):
        return f"{prefix}.{LAYER}", component.split("_")[1], None
    if component in comps:
        path, io = comps[component]
        return (path[1:] if path.startswith("/") else f"{prefix}.{LAYER}.{path}"), io, None
    return f"{prefix}.{LAYER}.{fused[0]}", "output", fused[1]


@pytest.mark.parametrize("family,component", list(_cases()))
def test_component_matches_hand_written_hooks(family, component):
    model = model_for(family)
    path, io, layout = _locate(family, component)
    module = model.get_submodule(path)
    base = example_inputs(family, seed=0)
    src = example_inputs(family, seed=1)
    s = capture(model, module, io, src)
    h, kv, hd = geometry(model)
    pre = "decoder." if family == "t5" else ""

    # 1. whole vector at one position (source position 2 -> base position 5)
    if layout is None:
        def edit(x):
            as3(x)[:, 5] = as3(s)[:, 2]
            return x
    else:
        part = component[0]
        cols = sum(qkv_columns(layout, part, h, kv, hd), [])

        def edit(x):
            x[:, 5, cols] = s[:, 2, cols]
            return x

    expected = main_out(run_with_edit(model, module, io, base, edit))
    im = pv.IntervenableModel(pv.RepresentationConfig(LAYER, pre + component), model)
    assert im.sites[0].path == path and im.sites[0].io == io
    if layout is None:  # the width the site reports is the tensor's (OPT's activation said 32 of 64)
        assert im.sites[0].width == s.shape[-1]
    _, out = im(base, [src], {"sources->base": (2, 5)})
    assert torch.equal(main_out(out), expected)
    assert not torch.equal(main_out(out), main_out(model(**base)))


HEAD_COMPONENTS = ["attention_value_output", "query_output", "key_output", "value_output"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("component", HEAD_COMPONENTS)
def test_head_units_match_hand_written_hooks(family, component):
    model = model_for(family)
    path, io, layout = _locate(family, component)
    module = model.get_submodule(path)
    base = example_inputs(family, seed=0)
    src = example_inputs(family, seed=1)
    s = capture(model, module, io, src)
    h, kv, hd = geometry(model)
    part = "q" if component == "attention_value_output" else component[0]
    n = h if part == "q" else kv
    head = n - 1
    if layout is None:
        cols = list(range(head * hd, (head + 1) * hd))
    else:
        cols = qkv_columns(layout, part, h, kv, hd)[head]

    def edit(x):
        x[:, 6, cols] = s[:, 3, cols]
        return x

    expected = main_out(run_with_edit(model, module, io, base, edit))
    pre = "decoder." if family == "t5" else ""
    im = pv.IntervenableModel(pv.RepresentationConfig(LAYER, pre + "head_" + component, unit="h.pos"), model)
    assert im.sites[0].n_heads == n and im.sites[0].head_dim == hd
    locs = {"sources->base": ([[[[head]] * 2, [[3]] * 2]], [[[[head]] * 2, [[6]] * 2]])}
    _, out = im(base, [src], locs)
    assert torch.equal(main_out(out), expected)
    with pytest.raises(pv.LocationError, match=f"head {n} is out of range; the site has {n} heads"):
        im(base, [src], {"sources->base": ([[[[n]] * 2, [[3]] * 2]], [[[[0]] * 2, [[6]] * 2]])})


def test_encoder_decoder_needs_a_stack_and_reaches_both():
    model = model_for("t5")
    with pytest.raises(pv.SiteError, match=r"several layer stacks \('decoder', 'encoder'\).*'decoder.block_output'"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "block_output"), model)
    base, src = example_inputs("t5", seed=0), example_inputs("t5", seed=1)
    enc = model.get_submodule("encoder.block.0")
    s = capture(model, enc, "output", src)

    def edit(x):
        x[:, 1] = s[:, 1]
        return x

    expected = run_with_edit(model, enc, "output", base, edit).logits
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "encoder.block_output"), model)
    _, out = im(base, [src], {"sources->base": 1})
    assert torch.equal(out.logits, expected)


def test_moe_activation_is_refused_clearly():
    with pytest.raises(pv.SiteError, match="mixture-of-experts"):
        pv.IntervenableModel(pv.RepresentationConfig(0, "mlp_activation"), model_for("mixtral"))
