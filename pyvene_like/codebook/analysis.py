"""Understanding codes: where each code fires over a dataset, and which codes match a pattern.

* :func:`record_codes` runs texts (or token ids) through a model with codebooks and records,
  for every code of every codebook (and head), how often it fires and its top activating
  tokens (highest similarity score) with their contexts. It returns :class:`CodeRecords`:
  ``codes``, a ``datasets.Dataset`` with one row per code, and ``tokens``, a
  ``datasets.Dataset`` with one row per sequence (ids, token strings, text and each token's
  character span in it).
* :func:`code_search` takes a regular expression over the text and ranks the codes whose
  firing best matches it: a token is *positive* when a match of the pattern overlaps its
  characters; for a code, precision = positives among the tokens where it fires / tokens where
  it fires, recall = positives where it fires / all positive tokens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from ..modes import restore_flags, training_flags
from ..validation import check_positive_int
from .info import CodeInfo
from .wrap import get_codebooks, module_key

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


@dataclass
class CodeRecords:
    """What :func:`record_codes` found: per-code rows (``codes``) and the corpus (``tokens``).

    ``codes`` columns: ``codebook`` (site name), ``layer``, ``component``, ``head`` (``None``
    for one-group codebooks), ``code``, ``count`` (tokens where it fired), ``frequency``
    (count / tokens), ``top_tokens``, ``top_contexts`` (the firing token in ``[[...]]``),
    ``top_scores``, ``top_positions`` (``[sequence, position]``); ``tokens`` columns:
    ``input_ids``, ``tokens``, ``text``, ``spans``. ``fire_code`` / ``fire_token`` are the flat
    firing table (row of ``codes``, global token index), kept for :func:`code_search`.
    """

    codes: object
    tokens: object
    fire_code: torch.Tensor
    fire_token: torch.Tensor
    num_tokens: int

    def save_to_disk(self, path: str | os.PathLike) -> None:
        """Both tables and the firing table under ``path`` (``datasets`` format + safetensors)."""

        from safetensors.torch import save_file

        from ..validation import check_path

        path = check_path(path, "CodeRecords.save_to_disk: path")
        self.codes.save_to_disk(str(path / "codes"))
        self.tokens.save_to_disk(str(path / "tokens"))
        save_file({"fire_code": self.fire_code.contiguous(), "fire_token": self.fire_token.contiguous()},
                  str(path / "fires.safetensors"))

    @classmethod
    def load_from_disk(cls, path: str | os.PathLike) -> CodeRecords:

        from datasets import load_from_disk
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ..errors import LoadError
        from ..validation import check_path

        path = check_path(path, "CodeRecords.load_from_disk: path", error=LoadError)
        expected = ("codes", "tokens", "fires.safetensors")
        lacks = [name for name in expected if not (path / name).exists()]
        if lacks:
            holds = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else []
            where = "is not a folder" if not path.is_dir() else f"lacks {', '.join(map(repr, lacks))}"
            raise LoadError(
                f"CodeRecords.load_from_disk: {str(path)!r} {where}; expected a folder written by "
                f"CodeRecords.save_to_disk holding {', '.join(map(repr, expected))} (it holds: "
                f"{', '.join(holds) or 'nothing'})"
            )
        fires_path = path / "fires.safetensors"
        try:
            fires = load_file(str(fires_path))
        except (SafetensorError, OSError) as e:
            raise LoadError(f"{fires_path} is not a readable safetensors file (truncated or corrupt: {e})") from None
        for key in ("fire_code", "fire_token"):
            t = fires.get(key)
            if t is None or t.dim() != 1 or t.dtype not in (torch.int64, torch.int32):
                raise LoadError(
                    f"{fires_path}: tensor {key!r} must be a 1-D int64 tensor, got "
                    f"{'nothing' if t is None else f'{t.dtype} of shape {list(t.shape)}'}"
                )
        if fires["fire_code"].shape != fires["fire_token"].shape:
            raise LoadError(f"{fires_path}: 'fire_code' and 'fire_token' must have the same length")
        try:
            tokens = load_from_disk(str(path / "tokens"))
            codes = load_from_disk(str(path / "codes"))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise LoadError(f"CodeRecords.load_from_disk: cannot read the tables in {str(path)!r}: {e}") from None
        if "input_ids" not in tokens.column_names:
            raise LoadError(f"{path / 'tokens'}: column 'input_ids' is missing; accepted: a table written by "
                            f"CodeRecords.save_to_disk")
        return cls(codes, tokens, fires["fire_code"], fires["fire_token"],
                   sum(len(t) for t in tokens["input_ids"]))


@dataclass
class CodeMatch:
    """One code's agreement with a pattern: ``info`` (a :class:`CodeInfo`), ``precision``,
    ``recall``, ``f1``, ``fires`` (tokens where it fires), ``hits`` (positives among them)."""

    info: CodeInfo
    precision: float
    recall: float
    f1: float
    fires: int
    hits: int


def _token_spans(tokenizer, ids: list[int]) -> tuple[list[str], str, list[list[int]]]:
    """Token strings, the decoded text, and each token's ``[start, end)`` in it (tokens found
    left to right; a token whose string is not found gets an empty span at the cursor)."""
    text = tokenizer.decode(ids)
    pieces = [tokenizer.decode([i]) for i in ids]
    spans, cursor = [], 0
    for piece in pieces:
        stripped = piece.strip()
        at = text.find(stripped, cursor) if stripped else -1
        if at < 0:
            spans.append([cursor, cursor])
        else:
            spans.append([at, at + len(stripped)])
            cursor = at + len(stripped)
    return pieces, text, spans


def _batches(data, tokenizer, batch_size, max_length):
    """-> list of id lists (one per sequence, no padding)."""
    if isinstance(data, str):
        data = [data]
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise ShapeError(f"record_codes: token ids must be [N, T], got shape {tuple(data.shape)}")
        return [row.tolist() for row in data]
    if hasattr(data, "column_names") or isinstance(data, dict):
        cols = data.column_names if hasattr(data, "column_names") else list(data)
        if "input_ids" in cols:
            return [list(map(int, r)) for r in data["input_ids"]]
        if "text" in cols:
            data = list(data["text"])
        else:
            raise ConfigError(f"record_codes: the dataset needs an 'input_ids' or 'text' column; it has {cols}")
    if not isinstance(data, (list, tuple)) or not data:
        raise ConfigError(
            f"record_codes: data must be texts, token ids ([N, T] tensor or lists), or a dataset with "
            f"'text' or 'input_ids'; got {type(data).__name__}"
        )
    if all(isinstance(t, str) for t in data):
        if tokenizer is None:
            raise ConfigError("record_codes: texts need tokenizer=")
        enc = tokenizer(list(data), truncation=max_length is not None, max_length=max_length)
        return [list(r) for r in enc["input_ids"]]
    if all(isinstance(t, (list, tuple)) for t in data):
        return [list(map(int, t)) for t in data]
    raise ConfigError("record_codes: data must be all texts or all token-id lists")


@torch.no_grad()
def record_codes(model: nn.Module,
                 data: Sequence[str] | Sequence[Sequence[int]] | torch.Tensor | Dataset | Mapping,
                 tokenizer: PreTrainedTokenizerBase | None = None, *, codebooks: Iterable[str] | None = None,
                 batch_size: int = 16, top_n: int = 10,
                 context: tuple[int, int] = (8, 2), max_length: int | None = None, pad_token_id: int = 0,
                 show_progress: bool = False) -> CodeRecords:
    """Run ``data`` through ``model`` and record every code's firing (see the module docstring).

    ``data``: texts (with ``tokenizer``), token ids, or a ``datasets.Dataset`` / dict with
    ``text`` or ``input_ids``. ``codebooks``: site names to record (default all);
    ``top_n`` examples per code; ``context``: tokens shown before and after the firing one.
    Sequences are batched by right-padding; padded positions are not recorded.
    """
    from datasets import Dataset
    from tqdm.auto import tqdm

    cbs = get_codebooks(model)
    names = cbs.names() if codebooks is None else list(codebooks)
    for n in names:
        if n not in cbs.names():
            raise ConfigError(f"record_codes: no codebook {n!r}; the model has: {cbs.names()}")
    check_positive_int(top_n, "record_codes: top_n")
    seqs = _batches(data, tokenizer, batch_size, max_length)
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ConfigError("record_codes: every sequence needs at least one token")
    layers = [cbs[module_key(n)] for n in names]
    sites = cbs.sites()
    # Row r of the codes table <-> (codebook b, head g, code c); codebook b's rows start at base[b].
    base, total = [], 0
    for cb in layers:
        base.append(total)
        total += cb.num_groups * cb.num_codes
    starts = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    codes_parts, token_parts, score_parts = [], [], []
    flags = training_flags(model)
    model.eval()
    scores_seen: dict[int, list] = {}
    hooks = []
    for b, cb in enumerate(layers):
        def hook(mod, args, out, b=b):
            xg = mod.normalize(args[0])
            s = mod.scores(xg)
            vals, ids = s.topk(mod.k, dim=-1)  # the layer's own selection (select() does the same)
            scores_seen.setdefault(b, []).append((ids, vals))
        hooks.append(cb.register_forward_hook(hook))
    try:
        for lo in tqdm(range(0, len(seqs), batch_size), disable=not show_progress, desc="recording codes"):
            chunk = seqs[lo:lo + batch_size]
            T = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), T), pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), T, dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            scores_seen.clear()
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
            # global token index of each [row, position]
            gidx = (starts[lo:lo + len(chunk)].unsqueeze(1) + torch.arange(T)).reshape(-1)
            keep = mask.reshape(-1).bool()
            for b, cb in enumerate(layers):
                got = scores_seen.get(b)
                if not got:
                    continue
                cids, vals = got[-1]
                G, k = cb.num_groups, cb.k
                cids = cids.reshape(-1, G, k).cpu()[keep]
                vals = vals.reshape(-1, G, k).float().cpu()[keep]
                rows = base[b] + torch.arange(G).view(1, G, 1) * cb.num_codes + cids  # [M, G, k]
                codes_parts.append(rows.reshape(-1))
                token_parts.append(gidx[keep].view(-1, 1, 1).expand_as(rows).reshape(-1))
                score_parts.append(vals.reshape(-1))
    finally:
        for h in hooks:
            h.remove()
        restore_flags(flags)
    fire_code = torch.cat(codes_parts) if codes_parts else torch.zeros(0, dtype=torch.long)
    fire_token = torch.cat(token_parts) if token_parts else torch.zeros(0, dtype=torch.long)
    fire_score = torch.cat(score_parts) if score_parts else torch.zeros(0)
    num_tokens = int(starts[-1])
    counts = torch.bincount(fire_code, minlength=total)

    # Sort fires by code, best score first within a code (two stable sorts).
    order = fire_score.argsort(descending=True, stable=True)
    order = order[fire_code[order].argsort(stable=True)]
    first = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    # The corpus, as text and spans (tokenizer needed for strings; ids otherwise).
    seq_of = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor([len(s) for s in seqs]))
    if tokenizer is not None:
        decoded = [_token_spans(tokenizer, s) for s in seqs]
    else:
        decoded = [([str(i) for i in s], " ".join(str(i) for i in s), None) for s in seqs]
    flat_tokens = [t for d in decoded for t in d[0]]
    before, after = context

    def ctx(g: int) -> str:
        sq = int(seq_of[g])
        p = g - int(starts[sq])
        toks = decoded[sq][0]
        left = "".join(toks[max(0, p - before):p])
        right = "".join(toks[p + 1:p + 1 + after])
        if tokenizer is not None and " " not in "".join(toks[max(0, p - before):p + 1 + after]):
            left = " ".join(toks[max(0, p - before):p]) + " "
            right = " " + " ".join(toks[p + 1:p + 1 + after])
        return f"{left}[[{toks[p]}]]{right}"

    cols = {k: [] for k in ("codebook", "layer", "component", "head", "code", "count", "frequency",
                            "top_tokens", "top_contexts", "top_scores", "top_positions")}
    for b, (name, cb) in enumerate(zip(names, layers)):
        cs = sites[name]
        for g in range(cb.num_groups):
            for c in range(cb.num_codes):
                r = base[b] + g * cb.num_codes + c
                sel = order[first[r]:first[r] + min(top_n, int(counts[r]))]
                toks = fire_token[sel].tolist()
                cols["codebook"].append(name)
                cols["layer"].append(cs.layer)
                cols["component"].append(cs.component)
                cols["head"].append(g if cb.num_groups > 1 else None)
                cols["code"].append(c)
                cols["count"].append(int(counts[r]))
                cols["frequency"].append(int(counts[r]) / max(1, num_tokens))
                cols["top_tokens"].append([flat_tokens[t] for t in toks])
                cols["top_contexts"].append([ctx(t) for t in toks])
                cols["top_scores"].append(fire_score[sel].tolist())
                cols["top_positions"].append([[int(seq_of[t]), t - int(starts[seq_of[t]])] for t in toks])
    codes_ds = Dataset.from_dict(cols)
    tokens_ds = Dataset.from_dict({
        "input_ids": seqs,
        "tokens": [d[0] for d in decoded],
        "text": [d[1] for d in decoded],
        "spans": [d[2] if d[2] is not None else [[0, 0]] * len(d[0]) for d in decoded],
    })
    return CodeRecords(codes_ds, tokens_ds, fire_code, fire_token, num_tokens)


def positive_tokens(records: CodeRecords, pattern: str | re.Pattern) -> torch.Tensor:
    """``[num_tokens]`` bool: the tokens a match of ``pattern`` overlaps (see :func:`code_search`)."""
    try:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        rx.finditer("")
    except (re.error, AttributeError, TypeError) as e:
        raise ConfigError(f"code_search: pattern {pattern!r} is not a valid regular expression: {e}") from None
    out = torch.zeros(records.num_tokens, dtype=torch.bool)
    offset = 0
    for text, spans in zip(records.tokens["text"], records.tokens["spans"]):
        matches = [m.span() for m in rx.finditer(text) if m.end() > m.start()]
        if matches:
            s = torch.tensor(spans)  # [T, 2]
            for a, e in matches:
                out[offset:offset + len(spans)] |= (s[:, 0] < e) & (s[:, 1] > a)
        offset += len(spans)
    return out


def code_search(records: CodeRecords, pattern: str | re.Pattern, *, top: int | None = 10, min_precision: float = 0.0,
                min_recall: float = 0.0, min_fires: int = 1, sort_by: str = "f1") -> list[CodeMatch]:
    """Codes whose firing best matches the regular expression ``pattern`` over the text.

    Per code: precision = hits / fires, recall = hits / positives (hits: positive tokens where
    it fires; a token is positive when a match overlaps it). Codes with at least ``min_fires``
    fires, ``min_precision`` and ``min_recall`` are ranked by ``sort_by`` (``"f1"``,
    ``"precision"`` or ``"recall"``), best first; ``top`` keeps that many (``None``: all).
    Each :class:`CodeMatch` carries a :class:`CodeInfo` ready for
    :func:`~pyvene_like.codebook.code_intervention_config`.
    """
    if sort_by not in ("f1", "precision", "recall"):
        raise ConfigError(f"code_search: sort_by {sort_by!r} is not accepted; accepted: 'f1', 'precision', 'recall'")
    if not isinstance(records, CodeRecords):
        raise ConfigError(f"code_search: records must come from record_codes, got {type(records).__name__}")
    pos = positive_tokens(records, pattern)
    n_pos = int(pos.sum())
    n_codes = len(records.codes)
    fires = torch.bincount(records.fire_code, minlength=n_codes).double()
    hits = torch.bincount(records.fire_code, weights=pos[records.fire_token].double(), minlength=n_codes)
    precision = torch.where(fires > 0, hits / fires.clamp(min=1), torch.zeros_like(hits))
    recall = hits / n_pos if n_pos else torch.zeros_like(hits)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(hits))
    key = {"f1": f1, "precision": precision, "recall": recall}[sort_by]
    ok = (fires >= min_fires) & (precision >= min_precision) & (recall >= min_recall)
    idx = ok.nonzero().flatten()
    idx = idx[key[idx].argsort(descending=True, stable=True)]
    if top is not None:
        idx = idx[:top]
    meta = records.codes.select_columns(["layer", "component", "head", "code"])
    out = []
    for r in idx.tolist():
        row = meta[r]
        info = CodeInfo(code=row["code"], layer=row["layer"], head=row["head"], site=row["component"])
        out.append(CodeMatch(info, float(precision[r]), float(recall[r]), float(f1[r]), int(fires[r]), int(hits[r])))
    return out
