"""Codebook training, saving only the codebooks, recording codes and code search.

Counts, precision and recall are checked against direct computations written here (loops over
tokens), on tiny GPT-2 models built from config and a hand-made word-level tokenizer.
"""

import json
import re
import warnings

import pytest
import torch
from conftest import make_gpt2
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import pyvene_like as pv
from pyvene_like.codebook import (
    CodeInfo,
    CodeRecords,
    code_search,
    get_codebooks,
    load_codebooks,
    positive_tokens,
    record_codes,
    save_codebooks,
    train_codebook_model,
    wrap_codebook,
)

WORDS = ["<pad>", "the", "dragon", "flew", "over", "hill", "a", "flower", "grew", "on", "red", "fire", "."]


def word_tokenizer():
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def small_model(seed=0, **kw):
    model = make_gpt2(seed, n_layer=1, n_embd=32, n_head=2, vocab_size=len(WORDS), n_positions=16, **kw)
    return wrap_codebook(model, ["head_attention_value_output"], num_codes=16, k=2, seed=seed)


def periodic_data(n=64, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(1, 6, (n, 1), generator=g)
    return 1 + (start + torch.arange(t)) % 6  # a deterministic cycle: easy to learn


# -- training -----------------------------------------------------------------------------------
def test_training_reduces_loss_and_restores_model_settings():
    model = small_model()
    frozen = model.transformer.wpe.weight
    frozen.requires_grad_(False)
    res = train_codebook_model(model, periodic_data(), steps=60, batch_size=16, lr=1e-2, log_every=10,
                               show_progress=False)
    assert res.global_step == 60 and len(res.history) == 6
    assert res.history[-1]["lm_loss"] < 0.5 * res.history[0]["lm_loss"], res.history
    assert all(h["reconstruction_loss"] >= 0 for h in res.history)
    assert not model.training
    assert frozen.requires_grad is False and model.transformer.wte.weight.requires_grad


def test_reconstruction_term_moves_codes_towards_inputs():
    torch.manual_seed(0)
    model = small_model()
    data = periodic_data()
    base = train_codebook_model(model, data, steps=1, lr=0.0, log_every=1, show_progress=False)
    before = base.history[0]["reconstruction_loss"]
    res = train_codebook_model(model, data, steps=40, lr=1e-2, train_model=False, log_every=40,
                               reconstruction_weight=1.0, show_progress=False)
    assert res.history[-1]["reconstruction_loss"] < before


def test_dead_codes_get_replaced_by_recent_inputs():
    model = small_model()
    cb = get_codebooks(model).at(0, "head_attention_value_output")
    with torch.no_grad():
        cb.codes[:, :8] *= 10.0
        cb.codes[:, 8:] = 0.0  # score 0: (almost) never among the best 2
    dead_before = cb.codes[:, 8:].clone()
    res = train_codebook_model(model, periodic_data(), steps=5, lr=1e-3, dead_code_steps=3, log_every=5,
                               show_progress=False)
    name = "layer_0.head_attention_value_output"
    assert res.replaced[name] >= 8  # most of the 2 x 8 dead codes
    assert res.history[-1]["dead_codes_replaced"] == res.replaced[name]
    assert (cb.codes[:, 8:] != dead_before).any(-1).sum() >= 8
    # replaced codes are normed inputs: their size is that of a layer-normed chunk (sqrt(d))
    norms = cb.codes[:, 8:].norm(dim=-1)
    assert norms.max() < 10 * cb.group_dim ** 0.5


def test_no_dead_code_replacement_when_disabled():
    model = small_model()
    res = train_codebook_model(model, periodic_data(), steps=4, dead_code_steps=None, show_progress=False)
    assert sum(res.replaced.values()) == 0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(data=torch.zeros(4)), pv.ShapeError, "integer \\[N, T\\]"),
        (dict(data=torch.zeros(4, 1, dtype=torch.long)), pv.ShapeError, "at least 2 tokens"),
        (dict(data={"text": ["a"]}), pv.ConfigError, "'input_ids' column"),
        (dict(steps=0), pv.ConfigError, "steps must be a positive int"),
        (dict(dead_code_steps=0), pv.ConfigError, "dead_code_steps must be"),
        (dict(reconstruction_weight=-1), pv.ConfigError, "reconstruction_weight"),
        (dict(data={"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 3)}),
         pv.ShapeError, "attention_mask has shape"),
    ],
)
def test_training_bad_input(kwargs, exc, match):
    model = small_model()
    args = dict(data=periodic_data(8), steps=1, show_progress=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        train_codebook_model(model, **args)


def test_training_needs_codebooks():
    with pytest.raises(pv.SiteError, match="has no codebooks"):
        train_codebook_model(make_gpt2(n_layer=1), periodic_data(), steps=1)


# -- saving only the codebooks -------------------------------------------------------------------
def test_save_load_round_trip_onto_unwrapped_model(tmp_path):
    model = small_model()
    train_codebook_model(model, periodic_data(), steps=5, show_progress=False)
    folder = save_codebooks(model, tmp_path / "cb")
    doc = json.loads((folder / "codebooks.json").read_text())
    assert doc["base_model"]["model_type"] == "gpt2" and doc["codebooks"][0]["num_codes"] == 16
    names = set(load_file(str(folder / "codebooks.safetensors")))
    assert names == {"layer_0.head_attention_value_output.codes", "layer_0.head_attention_value_output.ln_weight",
                     "layer_0.head_attention_value_output.ln_bias"}
    # a fresh copy of the same base model (its own weights equal), without codebooks
    fresh = make_gpt2(0, n_layer=1, n_embd=32, n_head=2, vocab_size=len(WORDS), n_positions=16)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("codebooks.")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_codebooks(fresh, folder)
    x = periodic_data(4)
    assert torch.equal(model(x).logits, fresh(x).logits)


def test_load_into_wrapped_model_and_identity_warning(tmp_path):
    model = small_model()
    save_codebooks(model, tmp_path)
    other = make_gpt2(0, n_layer=1, n_embd=32, n_head=2, vocab_size=len(WORDS), n_positions=32)
    wrap_codebook(other, ["head_attention_value_output"], num_codes=16, k=2, seed=5)
    with pytest.warns(pv.PyveneLikeWarning, match="trained on base model .* config hash|codes may mean nothing"):
        load_codebooks(other, tmp_path)
    a = get_codebooks(model).at(0, "head_attention_value_output").codes
    b = get_codebooks(other).at(0, "head_attention_value_output").codes
    assert torch.equal(a, b)


def test_load_mismatches(tmp_path):
    model = small_model()
    save_codebooks(model, tmp_path)
    twin = make_gpt2(0, n_layer=1, n_embd=32, n_head=2, vocab_size=len(WORDS), n_positions=16)
    wrap_codebook(twin, ["head_attention_value_output"], num_codes=8, k=2)
    with pytest.raises(pv.ConfigError, match="saved with num_codes=16, but the model's codebook has num_codes=8"):
        load_codebooks(twin, tmp_path)
    elsewhere = make_gpt2(0, n_layer=1, n_embd=32, n_head=2, vocab_size=len(WORDS), n_positions=16)
    wrap_codebook(elsewhere, [(0, "mlp_output")], num_codes=16, k=2)
    with pytest.raises(pv.ConfigError, match="has codebooks at .*mlp_output.* but .* holds codebooks at"):
        load_codebooks(elsewhere, tmp_path)
    with pytest.raises(pv.LoadError, match="has no codebooks.json"):
        load_codebooks(small_model(), tmp_path.parent)
    (tmp_path / "codebooks.safetensors").write_bytes(b"garbage")
    with pytest.raises(pv.LoadError, match="not a readable safetensors file"):
        load_codebooks(small_model(), tmp_path)
    with pytest.raises(pv.LoadError, match="load_codebooks: .* not in the local Hub cache"):
        load_codebooks(small_model(), "nobody/no-such-codebooks", local_files_only=True)
    with pytest.raises(pv.SiteError, match="has no codebooks"):
        save_codebooks(make_gpt2(n_layer=1), tmp_path / "x")


# -- recording codes and code search --------------------------------------------------------------
TEXTS = ["the dragon flew over the hill .", "a red flower grew on the hill .", "the red fire flew .",
         "a dragon grew ."]


def recorded(top_n=3):
    tok = word_tokenizer()
    model = small_model(3)
    return record_codes(model, TEXTS, tok, batch_size=3, top_n=top_n), model, tok


def direct_fires(model, tok):
    """{(head, code): [global token index, ...]} by running each text alone, position by position."""
    cb = get_codebooks(model).at(0, "head_attention_value_output")
    fires, offset = {}, 0
    for text in TEXTS:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with cb.recording() as rec:
            model(ids)
        chosen = rec[0][0]  # [T, G, k]
        for p in range(ids.shape[1]):
            for g in range(cb.num_groups):
                for c in chosen[p, g].tolist():
                    fires.setdefault((g, c), []).append(offset + p)
        offset += ids.shape[1]
    return fires, offset


def test_record_counts_match_a_direct_count():
    rec, model, tok = recorded()
    assert isinstance(rec, CodeRecords)
    fires, n_tokens = direct_fires(model, tok)
    assert rec.num_tokens == n_tokens == sum(len(t.split()) for t in TEXTS)
    rows = rec.codes
    assert len(rows) == 2 * 16
    for row in rows:
        want = fires.get((row["head"], row["code"]), [])
        assert row["count"] == len(want), row
        assert row["frequency"] == pytest.approx(len(want) / n_tokens)
        assert len(row["top_tokens"]) == min(3, len(want)) == len(row["top_contexts"])
        assert row["top_scores"] == sorted(row["top_scores"], reverse=True)
        for (s, p), token, context in zip(row["top_positions"], row["top_tokens"], row["top_contexts"]):
            assert TEXTS[s].split()[p] == token and f"[[{token}]]" in context
    assert sum(rows["count"]) == n_tokens * 2 * 2  # every token: k=2 codes in each of 2 heads
    assert rec.tokens["tokens"][0] == TEXTS[0].split()


def test_code_search_matches_direct_precision_and_recall():
    rec, model, tok = recorded()
    fires, _ = direct_fires(model, tok)
    words = [w for t in TEXTS for w in t.split()]
    positive = [bool(re.search(r"dragon|fire", w)) for w in words]
    assert positive_tokens(rec, r"dragon|fire").tolist() == positive
    matches = code_search(rec, r"dragon|fire", top=None)
    assert matches and all(isinstance(m.info, CodeInfo) for m in matches)
    for m in matches:
        where = fires[(m.info.head, m.info.code)]
        hits = sum(positive[i] for i in where)
        assert m.fires == len(where) and m.hits == hits
        assert m.precision == pytest.approx(hits / len(where))
        assert m.recall == pytest.approx(hits / sum(positive))
        assert m.info.site == "head_attention_value_output" and m.info.layer == 0
    f1 = [m.f1 for m in matches]
    assert f1 == sorted(f1, reverse=True)
    strict = code_search(rec, r"dragon|fire", min_precision=0.5, top=None)
    assert all(m.precision >= 0.5 for m in strict)
    # a pattern spanning two tokens marks both
    two = positive_tokens(rec, r"red fire")
    assert two.sum() == 2 and [words[i] for i in two.nonzero().flatten()] == ["red", "fire"]
    # the found codes drive an intervention directly
    config = pv.codebook.code_intervention_config([m.info for m in matches[:2]])
    assert config[0].component == "attention_value_output"


def test_record_save_load(tmp_path):
    rec, _, _ = recorded()
    rec.save_to_disk(tmp_path)
    back = CodeRecords.load_from_disk(tmp_path)
    assert back.num_tokens == rec.num_tokens and back.codes["count"] == rec.codes["count"]
    assert [m.info for m in code_search(back, "dragon")] == [m.info for m in code_search(rec, "dragon")]


def test_record_and_search_bad_input():
    rec, model, tok = recorded()
    with pytest.raises(pv.ConfigError, match="not a valid regular expression"):
        code_search(rec, "dragon(")
    with pytest.raises(pv.ConfigError, match="sort_by 'size' is not accepted"):
        code_search(rec, "dragon", sort_by="size")
    with pytest.raises(pv.ConfigError, match="records must come from record_codes"):
        code_search({"codes": []}, "dragon")
    with pytest.raises(pv.ConfigError, match="texts need tokenizer="):
        record_codes(model, TEXTS)
    with pytest.raises(pv.ConfigError, match="no codebook 'layer_3.mlp_output'"):
        record_codes(model, TEXTS, tok, codebooks=["layer_3.mlp_output"])
    with pytest.raises(pv.ConfigError, match="'input_ids' or 'text' column"):
        record_codes(model, {"words": ["a"]}, tok)
