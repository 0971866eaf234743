"""What every component means on every family of the matrix, and that it means the same thing.

``TABLE`` is written by hand from each family's modeling code (see ``FAMILY_SURVEY.md``): per
family, which module each component hooks and on which side. The meaning is the same on all
families (``MEANING``); where a family's modules do more than their own computation (BERT's
and Bloom's attention and MLP modules add the residual), the table names the projection inside
them. The tests check that resolution gives the table, that distinct components carry distinct
activations (``COINCIDE`` lists the pairs that are the same tensor by the family's design, and
why), and that the contributions add up to the block output as each family computes it.
"""

import pytest
import torch
from tiny_models import build_tiny_model, example_inputs
from torch import nn

import pyvene_like as pv
from pyvene_like.sites import BASE_COMPONENTS, HEAD_COMPONENTS, ModelLayout, resolve_site

MEANING = {
    "block_input": "the residual stream entering the layer",
    "block_output": "the residual stream leaving the layer (what the next layer reads)",
    "attention_input": "what the self-attention reads (after its pre-norm, where there is one)",
    "attention_output": "the self-attention's own contribution: after its output projection, "
                        "before dropout, residual add and any post-norm",
    "attention_value_output": "the heads' weighted values, concatenated: input of the output projection",
    "query_output": "the query projection's output (its columns of a fused QKV projection)",
    "key_output": "the key projection's output",
    "value_output": "the value projection's output",
    "mlp_input": "what the MLP reads (after its pre-norm, where there is one)",
    "mlp_activation": "the MLP's hidden activation, after the nonlinearity",
    "mlp_output": "the MLP's own contribution: after its down projection, before dropout, "
                  "residual add and any post-norm",
    "embedding_output": "the token-embedding lookup, before position embeddings, scaling or norm",
}

# family -> (component prefix, layer path, {component: (path under the layer, side)}).
# A path starting with "/" is from the model root; "fused" marks the columns of a fused QKV
# projection; None: the family has no such module (refused with a SiteError).
_LLAMA = {
    "attention_input": ("self_attn", "input"), "attention_output": ("self_attn", "output"),
    "attention_value_output": ("self_attn.o_proj", "input"),
    "query_output": ("self_attn.q_proj", "output"), "key_output": ("self_attn.k_proj", "output"),
    "value_output": ("self_attn.v_proj", "output"),
    "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act_fn", "output"), "mlp_output": ("mlp", "output"),
    "embedding_output": ("/model.embed_tokens", "output"),
}


def _fused(path):
    return {c: (path, "output", "fused") for c in ("query_output", "key_output", "value_output")}


TABLE = {
    "gpt2": ("", "transformer.h", {
        "attention_input": ("attn", "input"), "attention_output": ("attn", "output"),
        "attention_value_output": ("attn.c_proj", "input"), **_fused("attn.c_attn"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/transformer.wte", "output"),
    }),
    "gpt_neo": ("", "transformer.h", {
        "attention_input": ("attn.attention", "input"), "attention_output": ("attn.attention", "output"),
        "attention_value_output": ("attn.attention.out_proj", "input"),
        "query_output": ("attn.attention.q_proj", "output"), "key_output": ("attn.attention.k_proj", "output"),
        "value_output": ("attn.attention.v_proj", "output"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/transformer.wte", "output"),
    }),
    "gpt_neox": ("", "gpt_neox.layers", {
        "attention_input": ("attention", "input"), "attention_output": ("attention", "output"),
        "attention_value_output": ("attention.dense", "input"), **_fused("attention.query_key_value"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/gpt_neox.embed_in", "output"),
    }),
    "gptj": ("", "transformer.h", {
        "attention_input": ("attn", "input"), "attention_output": ("attn", "output"),
        "attention_value_output": ("attn.out_proj", "input"),
        "query_output": ("attn.q_proj", "output"), "key_output": ("attn.k_proj", "output"),
        "value_output": ("attn.v_proj", "output"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/transformer.wte", "output"),
    }),
    "llama": ("", "model.layers", _LLAMA),
    "mistral": ("", "model.layers", _LLAMA),
    "mixtral": ("", "model.layers", {**_LLAMA, "mlp_activation": None}),  # activation runs per expert
    "gemma": ("", "model.layers", _LLAMA),
    "gemma2": ("", "model.layers", _LLAMA),
    "qwen2": ("", "model.layers", _LLAMA),
    "qwen3": ("", "model.layers", _LLAMA),
    "phi3": ("", "model.layers", {
        **_LLAMA, **_fused("self_attn.qkv_proj"), "mlp_activation": ("mlp.activation_fn", "output"),
    }),
    # OPT has no MLP module: fc1 -> activation_fn -> fc2 sit in the layer (on flattened tokens).
    "opt": ("", "model.decoder.layers", {
        "attention_input": ("self_attn", "input"), "attention_output": ("self_attn", "output"),
        "attention_value_output": ("self_attn.out_proj", "input"),
        "query_output": ("self_attn.q_proj", "output"), "key_output": ("self_attn.k_proj", "output"),
        "value_output": ("self_attn.v_proj", "output"),
        "mlp_input": ("fc1", "input"), "mlp_activation": ("activation_fn", "output"), "mlp_output": ("fc2", "output"),
        "embedding_output": ("/model.decoder.embed_tokens", "output"),
    }),
    "falcon": ("", "transformer.h", {
        "attention_input": ("self_attention", "input"), "attention_output": ("self_attention", "output"),
        "attention_value_output": ("self_attention.dense", "input"), **_fused("self_attention.query_key_value"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.act", "output"), "mlp_output": ("mlp", "output"),
        "embedding_output": ("/transformer.word_embeddings", "output"),
    }),
    # Bloom's self_attention and mlp return residual + contribution: outputs of their projections.
    "bloom": ("", "transformer.h", {
        "attention_input": ("self_attention", "input"), "attention_output": ("self_attention.dense", "output"),
        "attention_value_output": ("self_attention.dense", "input"), **_fused("self_attention.query_key_value"),
        "mlp_input": ("mlp", "input"), "mlp_activation": ("mlp.gelu_impl", "output"),
        "mlp_output": ("mlp.dense_4h_to_h", "output"),
        "embedding_output": ("/transformer.word_embeddings", "output"),
    }),
    # BERT's attention.output and output return LayerNorm(residual + contribution): outputs of
    # their dense projections. The MLP is intermediate (up + act) then output.dense (down).
    "bert": ("", "encoder.layer", {
        "attention_input": ("attention", "input"), "attention_output": ("attention.output.dense", "output"),
        "attention_value_output": ("attention.output.dense", "input"),
        "query_output": ("attention.self.query", "output"), "key_output": ("attention.self.key", "output"),
        "value_output": ("attention.self.value", "output"),
        "mlp_input": ("intermediate", "input"), "mlp_activation": ("intermediate.intermediate_act_fn", "output"),
        "mlp_output": ("output.dense", "output"),
        "embedding_output": ("/embeddings.word_embeddings", "output"),
    }),
    # T5's layer[i] wrappers add norm and residual: the contributions are at SelfAttention and
    # DenseReluDense (layer.1 in the encoder, layer.2 in the decoder after cross-attention).
    "t5": ("encoder.", "encoder.block", {
        "attention_input": ("layer.0.SelfAttention", "input"), "attention_output": ("layer.0.SelfAttention", "output"),
        "attention_value_output": ("layer.0.SelfAttention.o", "input"),
        "query_output": ("layer.0.SelfAttention.q", "output"), "key_output": ("layer.0.SelfAttention.k", "output"),
        "value_output": ("layer.0.SelfAttention.v", "output"),
        "mlp_input": ("layer.1.DenseReluDense", "input"), "mlp_activation": ("layer.1.DenseReluDense.act", "output"),
        "mlp_output": ("layer.1.DenseReluDense", "output"),
        "embedding_output": ("/encoder.embed_tokens", "output"),
    }),
    # The decoder: self-attention at layer.0, cross-attention at layer.1 (reached by module path
    # only, e.g. 'decoder.block[{layer}].layer.1.EncDecAttention.output'), the MLP at layer.2.
    "t5.decoder": ("decoder.", "decoder.block", {
        "attention_input": ("layer.0.SelfAttention", "input"), "attention_output": ("layer.0.SelfAttention", "output"),
        "attention_value_output": ("layer.0.SelfAttention.o", "input"),
        "query_output": ("layer.0.SelfAttention.q", "output"), "key_output": ("layer.0.SelfAttention.k", "output"),
        "value_output": ("layer.0.SelfAttention.v", "output"),
        "mlp_input": ("layer.2.DenseReluDense", "input"), "mlp_activation": ("layer.2.DenseReluDense.act", "output"),
        "mlp_output": ("layer.2.DenseReluDense", "output"),
        "embedding_output": ("/decoder.embed_tokens", "output"),
    }),
}
FAMILIES = sorted(TABLE)
LAYER = 1  # at layer 0, block_input is the embedding output on families without position embeddings

# Pairs that are the same tensor by the family's design (checked to be bit-identical).
COINCIDE = {
    "bert": {frozenset({"block_input", "attention_input"}): "post-norm: the attention reads the block input"},
    "gptj": {frozenset({"attention_input", "mlp_input"}): "parallel attention and MLP read the same ln_1 output"},
    "falcon": {frozenset({"attention_input", "mlp_input"}):
               "parallel_attn with one input_layernorm: attention and MLP read the same tensor"},
}


def _expected(family, component):
    _, layer_path, rows = TABLE[family]
    if component in ("block_input", "block_output"):
        return f"{layer_path}.{LAYER}", component.split("_")[1], None
    row = rows[component]
    if row is None:
        return None
    path, io, *fused = row
    path = path[1:] if path.startswith("/") else f"{layer_path}.{LAYER}.{path}"
    return path, io, (fused[0] if fused else None)


_MODELS = {}


def model_for(family):
    family = family.split(".")[0]  # "t5.decoder" is the decoder stack of the t5 model
    if family not in _MODELS:
        model = build_tiny_model(family)
        # Norm weights start at exactly 1 and biases at 0: two norms of the same tensor would be
        # bit-identical by initialisation only. Perturb every vector parameter.
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.2 * torch.randn(p.shape, generator=g))
        _MODELS[family] = model
    return _MODELS[family]


def _sites(family, model=None):
    model = model if model is not None else model_for(family)
    layout = ModelLayout(model)
    prefix = TABLE[family][0]
    out = {}
    for c in BASE_COMPONENTS:
        if _expected(family, c) is None:
            continue
        out[c] = resolve_site(layout, LAYER, prefix + c, "pos")
    return out


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        for v in x:
            if isinstance(v, torch.Tensor):
                return v
    return None


def capture_all(model, sites, inputs):
    """One forward; each site's tensor cloned when its hook runs (Falcon mutates in place)."""
    got, handles = {}, []
    for name, site in sites.items():
        def hook(m, args, kwargs, output=None, name=name, site=site):
            if site.io == "output":
                t = _first_tensor(output)
            else:
                t = _first_tensor(args)
                if t is None:
                    t = kwargs.get("hidden_states", _first_tensor(kwargs))
            t = t.detach().clone()
            if site.columns is not None:
                t = t[..., site.columns]
            got[name] = t.reshape(-1, t.shape[-1])  # OPT's fc1/fc2 see [batch * seq, features]
        if site.io == "output":
            handles.append(site.module.register_forward_hook(hook, with_kwargs=True))
        else:
            handles.append(site.module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return got


# -- (a) resolution follows the table ------------------------------------------------------------
def _cases():
    for fam in FAMILIES:
        for c in BASE_COMPONENTS:
            yield fam, c


@pytest.mark.parametrize("family,component", list(_cases()))
def test_component_resolves_as_the_table_says(family, component):
    model = model_for(family)
    expected = _expected(family, component)
    layout = ModelLayout(model)
    name = TABLE[family][0] + component
    if expected is None:
        with pytest.raises(pv.SiteError, match=f"component {name!r}: could not find"):
            resolve_site(layout, LAYER, name, "pos")
        return
    path, io, fused = expected
    site = resolve_site(layout, LAYER, name, "pos")
    assert (site.path, site.io) == (path, io)
    assert site.module is model.get_submodule(path)
    assert (site.columns is not None) == (fused == "fused")
    if component in ("attention_output", "mlp_output", "block_input", "block_output", "attention_input",
                     "mlp_input", "embedding_output"):
        assert site.width == 32  # every tiny model has hidden size 32


def test_every_component_is_in_the_meaning_table():
    assert set(MEANING) == set(BASE_COMPONENTS)
    assert all(set(TABLE[f][2]) == set(BASE_COMPONENTS) - {"block_input", "block_output"} for f in FAMILIES)
    assert set(HEAD_COMPONENTS) == {"head_" + c for c in ("attention_value_output", "query_output",
                                                         "key_output", "value_output")}


# -- (b) distinct components carry distinct activations -------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_distinct_components_are_not_silently_equal(family):
    model = model_for(family)
    got = capture_all(model, _sites(family), example_inputs(family.split(".")[0]))
    names = sorted(got)
    assert len(names) == len([c for c in BASE_COMPONENTS if _expected(family, c) is not None])
    documented = COINCIDE.get(family, {})
    equal = set()
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if got[a].shape == got[b].shape and torch.equal(got[a], got[b]):
                equal.add(frozenset({a, b}))
    # every coincidence is documented, and every documented one is real
    assert equal == set(documented), {tuple(sorted(p)) for p in equal ^ set(documented)}


# -- (c) contributions computed by hand ------------------------------------------------------------
def _layer(model, family):
    return model.get_submodule(f"{TABLE[family][1]}.{LAYER}")


def _block_output_by_hand(family, layer, a):
    x, attn, mlp = a["block_input"], a["attention_output"], a["mlp_output"]
    if family == "t5.decoder":  # the cross-attention's contribution is added between the two
        return x + attn + a["cross_attention_output"] + mlp
    if family == "bert":  # post-norm
        mid = layer.attention.output.LayerNorm(attn + x)
        return layer.output.LayerNorm(mlp + mid)
    if family == "gemma2":  # post-norms on both contributions before the adds
        return x + layer.post_attention_layernorm(attn) + layer.post_feedforward_layernorm(mlp)
    return x + attn + mlp  # pre-norm, sequential or parallel (GPT-J, GPT-NeoX, Falcon)


@pytest.mark.parametrize("family", FAMILIES)
def test_contributions_add_up_to_the_block_output(family):
    model = model_for(family)
    sites = _sites(family)
    if family == "t5.decoder":
        sites["cross_attention_output"] = resolve_site(
            ModelLayout(model), LAYER, "decoder.block[{layer}].layer.1.EncDecAttention.output", "pos")
    a = capture_all(model, sites, example_inputs(family.split(".")[0]))
    with torch.no_grad():
        by_hand = _block_output_by_hand(family, _layer(model, family), a)
    torch.testing.assert_close(by_hand, a["block_output"], rtol=1e-5, atol=1e-5)
    assert not torch.equal(a["mlp_output"], a["block_output"])
    assert not torch.equal(a["attention_output"], a["block_output"])


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_output_is_the_output_projection_of_attention_value_output(family):
    model = model_for(family)
    sites = _sites(family)
    a = capture_all(model, sites, example_inputs(family.split(".")[0]))
    o = sites["attention_value_output"].module
    with torch.no_grad():
        torch.testing.assert_close(o(a["attention_value_output"]), a["attention_output"], rtol=1e-6, atol=1e-6)


_MLP_BY_HAND = {
    "bert": lambda L, x: L.output.dense(L.intermediate(x)),
    "bloom": lambda L, x: L.mlp.dense_4h_to_h(L.mlp.gelu_impl(L.mlp.dense_h_to_4h(x))),
    "opt": lambda L, x: L.fc2(L.activation_fn(L.fc1(x))),
    "gpt2": lambda L, x: L.mlp.c_proj(L.mlp.act(L.mlp.c_fc(x))),
    "llama": lambda L, x: L.mlp.down_proj(L.mlp.act_fn(L.mlp.gate_proj(x)) * L.mlp.up_proj(x)),
    "t5": lambda L, x: L.layer[1].DenseReluDense.wo(L.layer[1].DenseReluDense.act(L.layer[1].DenseReluDense.wi(x))),
}


@pytest.mark.parametrize("family", sorted(_MLP_BY_HAND))
def test_mlp_output_is_the_mlp_of_mlp_input(family):
    model = model_for(family)
    a = capture_all(model, _sites(family), example_inputs(family))
    with torch.no_grad():
        by_hand = _MLP_BY_HAND[family](_layer(model, family), a["mlp_input"])
    assert torch.equal(by_hand, a["mlp_output"])


def test_bert_interventions_on_mlp_output_change_the_contribution_only():
    """Zeroing BERT's mlp_output leaves LayerNorm(residual) as the block output, by hand."""
    model = model_for("bert")
    inputs = example_inputs("bert")
    a = capture_all(model, _sites("bert"), inputs)
    layer = _layer(model, "bert")
    im = pv.IntervenableModel(pv.RepresentationConfig(LAYER, "mlp_output", intervention_type="zero"), model)
    after = {}
    h = layer.register_forward_hook(lambda m, i, o: after.setdefault("out", _first_tensor(o).detach().clone()))
    try:
        im(inputs)
    finally:
        h.remove()
    with torch.no_grad():
        mid = layer.attention.output.LayerNorm(a["attention_output"] + a["block_input"])
        expected = layer.output.LayerNorm(mid)
    torch.testing.assert_close(after["out"].reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_bloom_sliced_weight_mode_is_refused():
    model = model_for("bloom")
    cfg = model.config
    old = (cfg.pretraining_tp, cfg.slow_but_exact)
    cfg.pretraining_tp, cfg.slow_but_exact = 2, True
    try:
        layout = ModelLayout(model)
        for c in ("attention_output", "mlp_output", "attention_value_output"):
            with pytest.raises(pv.SiteError, match=rf"'{c}' on bloom: with pretraining_tp=2 and "
                                                   r"slow_but_exact=True .* accepted: slow_but_exact=False"):
                resolve_site(layout, LAYER, c, "pos")
        assert resolve_site(layout, LAYER, "block_output", "pos").path == "transformer.h.1"
    finally:
        cfg.pretraining_tp, cfg.slow_but_exact = old


# -- wrappers: a user's module holding an HF model --------------------------------------------------
class Wrap(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.lm = model

    def forward(self, **kwargs):
        return self.lm(**kwargs)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_wrapper_resolves_every_component_the_model_does(family):
    model = model_for(family)
    wrapped = Wrap(model)
    inner, outer = ModelLayout(model), ModelLayout(wrapped)
    for c in [*BASE_COMPONENTS, *HEAD_COMPONENTS]:
        unit = "h" if c in HEAD_COMPONENTS else "pos"
        try:
            want = resolve_site(inner, LAYER, c, unit)
        except pv.SiteError:
            continue
        got = resolve_site(outer, LAYER, c, unit)
        assert got.module is want.module and got.io == want.io and got.path == "lm." + want.path, c
        assert (got.width, got.n_heads, got.head_dim) == (want.width, want.n_heads, want.head_dim), c
        assert (got.columns is None and want.columns is None) or torch.equal(got.columns, want.columns), c


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("component", ["mlp_output", "attention_output", "mlp_input", "embedding_output"])
def test_wrapper_interventions_equal_the_inner_models(family, component):
    model = model_for(family)
    base, src = example_inputs(family, seed=0), example_inputs(family, seed=1)
    outs = []
    for m in (model, Wrap(model)):
        im = pv.IntervenableModel(pv.RepresentationConfig(LAYER, component), m)
        _, out = im(base, [src], {"sources->base": (2, 5)})
        outs.append(out.logits if hasattr(out, "logits") else out.last_hidden_state)
    assert torch.equal(outs[0], outs[1])
    plain = model(**base)
    assert not torch.equal(outs[0], plain.logits if hasattr(plain, "logits") else plain.last_hidden_state)


def test_wrapper_with_two_models_names_its_stacks():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = build_tiny_model("gpt2")
            self.b = build_tiny_model("gpt2", seed=1)

    with pytest.raises(pv.SiteError, match=r"several layer stacks \('a', 'b'\); prefix the component"):
        resolve_site(ModelLayout(Two()), 0, "block_output", "pos")
    site = resolve_site(ModelLayout(Two()), 0, "b.block_output", "pos")
    assert site.path == "b.transformer.h.0"


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_wrapper_sites_know_their_width(family):
    """A codebook (which needs the site's width) goes on a wrapper's mlp_output as on the model."""
    from pyvene_like.codebook import unwrap_codebook, wrap_codebook

    model = build_tiny_model(family)
    wrapped = Wrap(model)
    wrap_codebook(wrapped, [(LAYER, "mlp_output"), (LAYER, "attention_output")], num_codes=4, k=1, seed=0)
    try:
        assert wrapped.codebooks.at(LAYER, "mlp_output").dim == 32
        assert wrapped.codebooks.at(LAYER, "attention_output").dim == 32
    finally:
        unwrap_codebook(wrapped)
