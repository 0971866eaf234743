"""Finding the token positions of a word or substring in a text.

A fast tokenizer reports, for every token, the characters of the text it covers
(``return_offsets_mapping``). A match of the substring in the text is a character span;
its tokens are those whose span overlaps it. That handles leading-space tokens (GPT-2's
``"Ġit"`` covers `` it``, or ``it`` with trimmed offsets: either overlaps ``it``), word
pieces (``"##s"``) and special tokens (empty spans, never matched) without any
tokenizer-specific rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError, LocationError, did_you_mean

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenSpan:
    """The tokens of one occurrence of a substring.

    ``positions`` are token indices into the encoding of the text alone (with the
    tokenizer's special tokens when ``add_special_tokens`` was on); ``start``/``end`` are the
    character span of the match. ``index`` is the *last* token: in a causal model the first
    position where the whole word has been read, and the only one for one-token words.
    """

    text: str
    start: int
    end: int
    positions: tuple[int, ...]

    @property
    def index(self) -> int:
        return self.positions[-1]

    @property
    def first(self) -> int:
        return self.positions[0]

    @property
    def last(self) -> int:
        return self.positions[-1]


class TokenFinder:
    """The tokenization of one text, with lookups of substrings in it.

    ``TokenFinder(text, tokenizer)`` tokenizes ``text`` once (a fast tokenizer is needed for
    character offsets). ``find_first("it")``, ``find_all("it")`` and ``find(..., occurrence=k)``
    return :class:`TokenSpan` objects; a substring that is not in the text raises
    :class:`~pyvene_like.LocationError`.
    """

    def __init__(self, text: str, tokenizer: PreTrainedTokenizerBase, add_special_tokens: bool = True):
        if not isinstance(text, str):
            raise ConfigError(f"TokenFinder: text must be a str, got {type(text).__name__}")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"TokenFinder: tokenizer {type(tokenizer).__name__} gives no character offsets; "
                "use a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        self.text = text
        self.tokenizer = tokenizer
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        self.input_ids: list[int] = list(enc["input_ids"])
        self.offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]

    @classmethod
    def create_from_tokenizer(cls, text: str, tokenizer: PreTrainedTokenizerBase,
                              add_special_tokens: bool = True) -> TokenFinder:
        return cls(text, tokenizer, add_special_tokens=add_special_tokens)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def tokens(self) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(self.input_ids)

    def _matches(self, substring: str, whole_word: bool, case_sensitive: bool) -> list[tuple[int, int]]:
        if not isinstance(substring, str) or not substring.strip():
            raise ConfigError(f"find: substring must be a non-empty str, got {substring!r}")
        pattern = re.escape(substring.strip())
        if whole_word:
            # Not inside a longer word: "it" does not match in "item" or "bit".
            pattern = rf"(?<!\w){pattern}(?!\w)"
        flags = 0 if case_sensitive else re.IGNORECASE
        return [m.span() for m in re.finditer(pattern, self.text, flags)]

    def _span(self, start: int, end: int) -> TokenSpan:
        positions = tuple(i for i, (a, b) in enumerate(self.offsets) if b > a and a < end and b > start)
        return TokenSpan(self.text[start:end], start, end, positions)

    def find_all(self, substring: str, whole_word: bool = True, case_sensitive: bool = True) -> list[TokenSpan]:
        """Every occurrence, in order of appearance."""
        spans = [self._span(a, b) for a, b in self._matches(substring, whole_word, case_sensitive)]
        spans = [s for s in spans if s.positions]  # a match in text the tokenizer truncated away
        if not spans:
            words = sorted(set(re.findall(r"\w+", self.text)))
            kind = "word" if whole_word else "substring"
            raise LocationError(
                f"find: {kind} {substring!r} is not in the text {self.text!r}"
                f"{' (whole words only; pass whole_word=False for parts of words)' if whole_word else ''}."
                f"{did_you_mean(substring.strip(), words)}"
            )
        return spans

    def find(self, substring: str, occurrence: int = 0, whole_word: bool = True,
             case_sensitive: bool = True) -> TokenSpan:
        """The ``occurrence``-th match (0 the first, -1 the last)."""
        spans = self.find_all(substring, whole_word, case_sensitive)
        if not -len(spans) <= occurrence < len(spans):
            raise LocationError(
                f"find: occurrence={occurrence} of {substring!r}, but the text {self.text!r} has "
                f"{len(spans)} (accepted: {-len(spans)} .. {len(spans) - 1})"
            )
        return spans[occurrence]

    def find_first(self, substring: str, whole_word: bool = True, case_sensitive: bool = True,
                   allow_space_prefix: bool = True) -> TokenSpan:
        """The first match. ``allow_space_prefix`` is accepted for compatibility: leading-space
        tokens always match, since offsets are compared, not token strings."""
        return self.find(substring, 0, whole_word, case_sensitive)


def find_token_positions(texts: str | Sequence[str], substring: str | Sequence[str],
                         tokenizer: PreTrainedTokenizerBase, *, occurrence: int = 0, which: str = "last",
                         whole_word: bool = True, case_sensitive: bool = True,
                         add_special_tokens: bool = True) -> int | list[int]:
    """Token position of ``substring`` in each text (one int per text, or one int for a str).

    ``substring`` may be one string for all texts or one per text. ``which`` picks the
    ``"last"`` or ``"first"`` token of a multi-token match. Positions index each text's own
    encoding; :func:`~pyvene_like.analysis.collect_activations` shifts them for left padding.
    """
    if which not in ("first", "last"):
        raise ConfigError(f"find_token_positions: which={which!r}; accepted: 'first', 'last'")
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    subs = [substring] * len(texts) if isinstance(substring, str) else list(substring)
    if len(subs) != len(texts):
        raise ConfigError(f"find_token_positions: {len(subs)} substrings for {len(texts)} texts")
    out = []
    for text, sub in zip(texts, subs):
        span = TokenFinder(text, tokenizer, add_special_tokens).find(sub, occurrence, whole_word, case_sensitive)
        out.append(span.first if which == "first" else span.last)
    return out[0] if single else out
