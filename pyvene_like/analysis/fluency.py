"""Is steered text still text? Fluency measures for generations, and steering success gated by them.

A steering method that names the target in word salad has not steered a model, it has broken
it. Three measures, shared by the generation tutorials:

* :class:`CorpusGrammar`: the sentences a corpus can contain (for a synthetic corpus, every
  sentence its templates can produce). :meth:`CorpusGrammar.check` splits a text into
  sentences at the end word and judges each: a finished sentence must be one of the grammar's,
  an unfinished last one (generation stopped mid-sentence) must begin one of them.
  :func:`grammar_rates` gives the share of valid texts and of valid sentences.
* :func:`perplexity`: the perplexity of the generated tokens under a reference model
  (usually the unsteered one): how surprising the steered text is to the model it came from.
* :func:`gated_rates`: the topic rate, the fluent rate and their conjunction per generation,
  ``fluent_on_topic_rate``, the headline number of a steering table; also the topic rate among
  fluent generations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from ..validation import check_token_ids, is_int


def _words(text: str | Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(text, str):
        return tuple(text.split())
    if isinstance(text, (list, tuple)) and all(isinstance(w, str) for w in text):
        return tuple(text)
    raise ConfigError(f"{name}: a text must be a string or a list of words (strings), got {type(text).__name__}")


@dataclass(frozen=True)
class TextCheck:
    """One text judged by a :class:`CorpusGrammar`: ``sentences`` (finished ones, plus the
    unfinished tail if there is one), ``valid_sentences`` among them, ``unfinished`` (the text
    stops mid-sentence); ``valid``: it has words and every sentence is valid."""

    sentences: int
    valid_sentences: int
    unfinished: bool

    @property
    def valid(self) -> bool:
        return self.sentences > 0 and self.valid_sentences == self.sentences


class CorpusGrammar:
    """The set of sentences a corpus may contain; a sentence is a sequence of words ending with
    ``end``. Build it from every sentence the corpus's templates can produce (or from the
    corpus itself, for a grammar that accepts only what was seen)."""

    def __init__(self, sentences: Iterable[str | Sequence[str]], *, end: str = "."):
        if not isinstance(end, str) or not end or end.strip() != end or " " in end:
            raise ConfigError(f"CorpusGrammar: end must be one word (a non-empty string without spaces), got {end!r}")
        self.end = end
        self._sentences: set[tuple[str, ...]] = set()
        self._prefixes: set[tuple[str, ...]] = {()}
        if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable):
            raise ConfigError(f"CorpusGrammar: sentences must be a list of sentences (strings or lists of words), "
                              f"got {type(sentences).__name__}")
        for i, s in enumerate(sentences):
            words = _words(s, f"CorpusGrammar: sentence {i}")
            if len(words) < 2 or words[-1] != end or end in words[:-1]:
                raise ConfigError(
                    f"CorpusGrammar: sentence {i} ({' '.join(words)!r}) must end with the end word {end!r} "
                    f"and hold it only there, after at least one word"
                )
            self._sentences.add(words)
            self._prefixes.update(words[:j] for j in range(1, len(words)))
        if not self._sentences:
            raise ConfigError("CorpusGrammar: no sentences given; give every sentence the corpus may contain")

    def __len__(self) -> int:
        return len(self._sentences)

    def __contains__(self, sentence: str | Sequence[str]) -> bool:
        return _words(sentence, "CorpusGrammar") in self._sentences

    def check(self, text: str | Sequence[str]) -> TextCheck:
        """Judge ``text`` (a string of whitespace-separated words, or a list of words)."""
        words = _words(text, "CorpusGrammar.check")
        n = ok = start = 0
        for i, w in enumerate(words):
            if w == self.end:
                n += 1
                ok += words[start:i + 1] in self._sentences
                start = i + 1
        tail = words[start:]
        if tail:
            n += 1
            ok += tail in self._prefixes
        return TextCheck(sentences=n, valid_sentences=ok, unfinished=bool(tail))


def grammar_rates(grammar: CorpusGrammar, texts: Sequence[str | Sequence[str]]) -> dict:
    """``{"fluent_rate": share of texts valid under the grammar, "sentence_valid_rate": share of
    their sentences that are valid, "n": number of texts}``."""
    if not isinstance(grammar, CorpusGrammar):
        raise ConfigError(f"grammar_rates: grammar must be a CorpusGrammar, got {type(grammar).__name__}")
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ConfigError(f"grammar_rates: texts must be a non-empty list of texts (strings or lists of words), got "
                          f"{texts!r}"[:200])
    checks = [grammar.check(t) for t in texts]
    n_sent = sum(c.sentences for c in checks)
    return {"fluent_rate": sum(c.valid for c in checks) / len(checks),
            "sentence_valid_rate": sum(c.valid_sentences for c in checks) / n_sent if n_sent else 0.0,
            "n": len(checks)}


def _flags(values, name: str) -> list[bool]:
    """One bool per generation (Python or numpy bools, or a bool tensor); 1, "yes" or 0.7 are
    refused rather than read by truthiness."""
    if isinstance(values, torch.Tensor) and values.dtype == torch.bool and values.dim() == 1:
        return values.tolist()
    if hasattr(values, "dtype") and hasattr(values, "tolist") and str(values.dtype) == "bool":
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"gated_rates: {name} must be a list of bools, one per generation, got {values!r}"[:200])
    for i, v in enumerate(values):
        if not isinstance(v, bool) and type(v).__name__ != "bool_":
            raise ConfigError(f"gated_rates: {name}[{i}] must be True or False, got {v!r} (turn scores into flags "
                              f"yourself, e.g. score > threshold)")
    return [bool(v) for v in values]


def gated_rates(on_topic: Sequence[bool], fluent: Sequence[bool]) -> dict:
    """Steering success counted on fluent generations only, from one flag pair per generation:
    ``on_topic_rate``, ``fluent_rate``, ``fluent_on_topic_rate`` (on topic *and* fluent: the
    headline) and ``on_topic_among_fluent`` (0.0 when no generation is fluent), with ``n``."""
    on_topic, fluent = _flags(on_topic, "on_topic"), _flags(fluent, "fluent")
    if len(on_topic) != len(fluent):
        raise ShapeError(f"gated_rates: {len(on_topic)} on-topic flags but {len(fluent)} fluency flags; "
                         f"give one of each per generation")
    if not on_topic:
        raise ConfigError("gated_rates: no generations; give one on-topic and one fluency flag per generation")
    n, n_fluent = len(on_topic), sum(fluent)
    both = sum(a and b for a, b in zip(on_topic, fluent))
    return {"on_topic_rate": sum(on_topic) / n, "fluent_rate": n_fluent / n, "fluent_on_topic_rate": both / n,
            "on_topic_among_fluent": both / n_fluent if n_fluent else 0.0, "n": n}


@torch.no_grad()
def generated_nll(model: nn.Module, sequences: torch.Tensor, prompt_length: int, *,
                  stop_token: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood of each generated token under ``model`` (a causal LM returning
    ``.logits``): ``(nll, mask)``, both ``[n, length - prompt_length]``. ``sequences`` are the
    prompt's ``prompt_length`` tokens followed by the generation; with ``stop_token``, tokens
    after a sequence's first stop token (padding) are masked out, the stop token itself counts."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"generated_nll: model must be a torch nn.Module (a causal LM), got {type(model).__name__}")
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2 or sequences.dtype.is_floating_point \
            or sequences.dtype == torch.bool or sequences.dtype.is_complex:
        shape = list(sequences.shape) if isinstance(sequences, torch.Tensor) else type(sequences).__name__
        raise ShapeError(f"generated_nll: sequences must be a [n, length] tensor of token ids, got {shape}")
    if not is_int(prompt_length) or not 1 <= prompt_length < sequences.shape[1]:
        raise ConfigError(f"generated_nll: prompt_length must be an int in 1..{sequences.shape[1] - 1} (the "
                          f"sequences have {sequences.shape[1]} tokens and the first is never scored), got {prompt_length!r}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    check_token_ids(sequences, "generated_nll: sequences", vocab_size=vocab)
    longest = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if is_int(longest) and sequences.shape[1] > longest:
        raise ShapeError(f"generated_nll: sequences have {sequences.shape[1]} tokens, more than the model's "
                         f"{longest} positions (max_position_embeddings)")
    if stop_token is not None and (not is_int(stop_token) or stop_token < 0 or (is_int(vocab) and stop_token >= vocab)):
        raise ConfigError(f"generated_nll: stop_token must be None or a token id (an int in "
                          f"0..{vocab - 1 if is_int(vocab) else 'vocab_size - 1'}), got {stop_token!r}")
    device = next(model.parameters()).device
    seq = sequences.to(device)
    out = model(input_ids=seq)
    logits = getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != seq.shape:
        raise ConfigError(
            f"generated_nll: model must be a causal LM whose output has .logits of shape [n, length, vocab]; "
            f"{type(model).__name__} returned {type(out).__name__}"
            + ("" if logits is None else f" with logits of shape {list(getattr(logits, 'shape', []))}")
        )
    logits = logits[:, prompt_length - 1:-1].float()
    target = seq[:, prompt_length:]
    nll = -torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
    mask = torch.ones_like(target, dtype=torch.bool)
    if stop_token is not None:
        stopped = (target == stop_token).long().cumsum(1)
        mask = (stopped == 0) | ((stopped == 1) & (target == stop_token))
    return nll.cpu(), mask.cpu()


def perplexity(model: nn.Module, generations: Iterable[tuple[torch.Tensor, int]], *,
               stop_token: int | None = None) -> float:
    """Perplexity of generated tokens under ``model``: ``exp`` of the mean NLL per token over
    every ``(sequences, prompt_length)`` pair (one per prompt); see :func:`generated_nll`."""
    total, count = 0.0, 0
    if isinstance(generations, (str, bytes, Mapping, torch.Tensor)) or not isinstance(generations, Iterable):
        raise ConfigError(f"perplexity: generations must be a list of (sequences, prompt_length) pairs, got "
                          f"{type(generations).__name__}")
    for i, pair in enumerate(generations):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ConfigError(f"perplexity: generations[{i}] must be a (sequences, prompt_length) pair, got "
                              f"{type(pair).__name__}{f' of {len(pair)}' if isinstance(pair, (tuple, list)) else ''}")
        sequences, prompt_length = pair
        nll, mask = generated_nll(model, sequences, prompt_length, stop_token=stop_token)
        total += float(nll[mask].sum())
        count += int(mask.sum())
    if not count:
        raise ConfigError("perplexity: no generated tokens to score; give (sequences, prompt_length) pairs with "
                          "tokens after the prompt")
    return math.exp(total / count)
