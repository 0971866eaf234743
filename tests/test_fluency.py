"""pyvene_like.analysis.fluency: corpus grammar checks, perplexity of generations, gated rates.
Checked against hand-counted texts and a direct log-softmax computation on a tiny GPT-2."""

from __future__ import annotations

import math

import pytest
import torch

from pyvene_like.analysis import (
    CorpusGrammar,
    gated_rates,
    generated_nll,
    grammar_rates,
    perplexity,
)
from pyvene_like.errors import ConfigError, ShapeError
from tests.conftest import make_gpt2

SENTENCES = ["the cat sat .", "the dog ran far .", "a bird sang ."]


@pytest.fixture()
def grammar():
    return CorpusGrammar(SENTENCES)


def test_grammar_judges_sentences_and_unfinished_tails(grammar):
    assert len(grammar) == 3 and "the cat sat ." in grammar and "the cat ran ." not in grammar
    ok = grammar.check("the cat sat . a bird sang .")
    assert (ok.sentences, ok.valid_sentences, ok.unfinished, ok.valid) == (2, 2, False, True)
    tail = grammar.check("the dog ran far . the dog")  # stopped mid-sentence, a valid beginning
    assert (tail.sentences, tail.valid_sentences, tail.unfinished, tail.valid) == (2, 2, True, True)
    bad = grammar.check(["the", "cat", "cat", "sat", ".", "a", "bird", "sang", "."])
    assert (bad.sentences, bad.valid_sentences, bad.valid) == (2, 1, False)
    assert not grammar.check("the dog sat").valid  # a tail no sentence begins with
    assert not grammar.check("").valid  # no words: not a fluent text


def test_grammar_rates_count_texts_and_sentences(grammar):
    rates = grammar_rates(grammar, ["the cat sat .", "the cat sat . the bird", "a bird sang . a bird sang ."])
    assert rates == {"fluent_rate": 2 / 3, "sentence_valid_rate": 4 / 5, "n": 3}


def test_gated_rates_count_only_fluent_generations_on_topic():
    rates = gated_rates([True, True, False, True], [True, False, True, False])
    assert rates == {"on_topic_rate": 0.75, "fluent_rate": 0.5, "fluent_on_topic_rate": 0.25,
                     "on_topic_among_fluent": 0.5, "n": 4}
    assert gated_rates([True], [False])["on_topic_among_fluent"] == 0.0


def test_generated_nll_matches_log_softmax_and_stops_at_the_stop_token():
    model = make_gpt2(n_layer=1, vocab_size=20)
    seq = torch.tensor([[1, 2, 3, 4, 0, 0], [1, 2, 5, 6, 7, 8]])
    nll, mask = generated_nll(model, seq, 2, stop_token=0)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=seq).logits.float(), -1)
    want = -logp[:, 1:-1].gather(-1, seq[:, 2:, None])[..., 0]
    torch.testing.assert_close(nll, want)
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]  # the first stop counts
    ppl = perplexity(model, [(seq, 2)], stop_token=0)
    assert ppl == pytest.approx(math.exp(float(want[mask].mean())), rel=1e-5)
    assert perplexity(model, [(seq, 2)]) == pytest.approx(math.exp(float(want.mean())), rel=1e-5)


def test_bad_inputs_name_what_is_accepted(grammar):
    with pytest.raises(ConfigError, match="must end with the end word '.'"):
        CorpusGrammar(["the cat sat"])
    with pytest.raises(ConfigError, match="no sentences given"):
        CorpusGrammar([])
    with pytest.raises(ConfigError, match="end must be one word"):
        CorpusGrammar(SENTENCES, end="")
    with pytest.raises(ConfigError, match="a text must be a string or a list of words"):
        grammar.check(3)
    with pytest.raises(ConfigError, match="texts must be a non-empty list"):
        grammar_rates(grammar, [])
    with pytest.raises(ConfigError, match="grammar must be a CorpusGrammar"):
        grammar_rates(set(SENTENCES), ["the cat sat ."])
    with pytest.raises(ShapeError, match="2 on-topic flags but 1 fluency flags"):
        gated_rates([True, False], [True])
    with pytest.raises(ConfigError, match="no generations"):
        gated_rates([], [])
    model = make_gpt2(n_layer=1, vocab_size=20)
    with pytest.raises(ConfigError, match=r"prompt_length must be an int in 1\.\.3.*got 4"):
        generated_nll(model, torch.zeros(2, 4, dtype=torch.long), 4)
    with pytest.raises(ShapeError, match="sequences must be a \\[n, length\\] tensor of token ids"):
        generated_nll(model, torch.zeros(4), 1)
    with pytest.raises(ConfigError, match="no generated tokens to score"):
        perplexity(model, [])
