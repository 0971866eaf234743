"""Activation datasets: Collect interventions streamed to an Arrow file.

``collect_activations`` compiles one Collect intervention per site into an
:class:`~pyvene_like.IntervenableModel`, runs the examples batch by batch (one forward per
batch, stopped right after the last site: ``IntervenableModel.collect``) and appends each
batch's activations to an Arrow file with ``datasets``' ``ArrowWriter``. The returned
:class:`datasets.Dataset` memory-maps that file, so memory holds one batch whatever the
number of examples.

Columns: one per site and head (``"L3.block_output"``, ``"L3.head_attention_value_output.H5"``:
fixed-length float32 lists), ``label`` (a ``ClassLabel`` when class names are known),
``example``, ``position``, ``text`` for text inputs, and any user ``columns``. What is true
of the whole dataset (model identity, sites, class names, the user's ``metadata``) is JSON in
``dataset.info.description``; :func:`activation_metadata` reads it back.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import IntervenableConfig, RepresentationConfig
from ..errors import ConfigError, LocationError, ShapeError, SiteError
from ..sites import HEAD_COMPONENTS
from ..training.distributed import process_state
from ..validation import check_non_negative_int, check_positive_int, is_int
from .tokens import find_token_positions

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

FORMAT = "pyvene_like.activations/1"
_RESERVED = {"label", "example", "position", "text"}


@dataclass(frozen=True)
class ActivationSite:
    """One place to read: ``layer``, ``component`` and, for ``head_*`` components, ``heads``
    (``None``: every head)."""

    layer: int
    component: str
    heads: tuple[int, ...] | None = None

    @property
    def is_head(self) -> bool:
        return self.component in HEAD_COMPONENTS

    def column(self, head: int | None = None) -> str:
        base = f"L{self.layer}.{self.component}"
        return base if head is None else f"{base}.H{head}"


def _as_site(spec) -> ActivationSite:
    if isinstance(spec, ActivationSite):
        return spec
    if isinstance(spec, Mapping):
        spec = (spec.get("layer"), spec.get("component"), spec.get("heads"))
    if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
        raise ConfigError(
            f"collect_activations: site {spec!r}; accepted: (layer, component), (layer, component, "
            "heads) or ActivationSite"
        )
    layer, component, *rest = spec
    heads = rest[0] if rest else None
    if not isinstance(layer, int) or not isinstance(component, str):
        raise ConfigError(f"collect_activations: site {spec!r} needs an int layer and a component name")
    if heads is not None:
        if component not in HEAD_COMPONENTS:
            raise SiteError(
                f"collect_activations: site {spec!r} names heads, but {component!r} is not a head "
                f"component; use one of {sorted(HEAD_COMPONENTS)} (e.g. 'head_attention_value_output')"
            )
        heads = (heads,) if isinstance(heads, int) else tuple(int(h) for h in heads)
        if not heads:
            raise ConfigError(f"collect_activations: site {spec!r} names no heads")
    return ActivationSite(layer, component, heads)


def activation_metadata(dataset: Dataset) -> dict:
    """The metadata :func:`collect_activations` stored with ``dataset`` (a dict)."""
    try:
        doc = json.loads(dataset.info.description or "")
    except (ValueError, AttributeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError("activation_metadata: this dataset was not written by collect_activations")
    return doc


def activation_columns(dataset: Dataset) -> list[str]:
    """The activation columns of a dataset written by :func:`collect_activations`, in order."""
    return list(activation_metadata(dataset)["columns"])


# -- inputs --------------------------------------------------------------------------------------
def _rows(mapping, n: int):
    for v in mapping.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    return n


def _batches(inputs, tokenizer, batch_size: int, positions, labels, takes_position_ids: bool = False):
    """Yield ``(model_inputs, positions [B, P] in batch coordinates, valid [B, P], labels or None,
    texts or None)``; ``valid`` marks the real entries of examples with fewer than ``P`` positions."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, Sequence) and inputs and all(isinstance(t, str) for t in inputs):
        if tokenizer is None:
            raise ConfigError("collect_activations: inputs are texts; pass tokenizer= to tokenize them")
        n = len(inputs)
        pos = _positions_for_texts(inputs, positions, tokenizer)
        _check_len(labels, n, "labels")
        for s in range(0, n, batch_size):
            texts = list(inputs[s:s + batch_size])
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            mask = enc.get("attention_mask")
            lengths = mask.sum(1) if mask is not None else torch.full((len(texts),), enc["input_ids"].shape[1])
            p, valid = _position_rows(pos[s:s + batch_size])
            p = torch.where(p < 0, p + lengths[:, None], p)
            bad = ((p < 0) | (p >= lengths[:, None])) & valid
            if bad.any():
                i, j = (int(x) for x in bad.nonzero()[0])
                given = pos[s + i] if isinstance(pos[s + i], int) else list(pos[s + i])[j]
                raise LocationError(f"collect_activations: position {given} is out of range for text "
                                    f"{s + i} ({int(lengths[i])} tokens)")
            enc = dict(enc)
            if getattr(tokenizer, "padding_side", "right") == "left":
                p = p + (enc["input_ids"].shape[1] - lengths)[:, None]
                if mask is not None and takes_position_ids and (mask == 0).any():
                    # As HF generate does: real tokens count positions from 0, so each
                    # example reads as it would alone.
                    enc["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
            yield enc, p, valid, None if labels is None else labels[s:s + batch_size], texts
    elif isinstance(inputs, (Mapping, torch.Tensor)):
        inputs = {"input_ids": inputs} if isinstance(inputs, torch.Tensor) else dict(inputs)
        n = _rows(inputs, 0)
        pos = _as_positions(positions)
        _check_len(None if isinstance(pos, int) else pos, n, "positions")
        _check_len(labels, n, "labels")
        for s in range(0, n, batch_size):
            batch = {k: v[s:s + batch_size] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                     for k, v in inputs.items()}
            b = _rows(batch, 0)
            p, valid = _position_rows([pos] * b if isinstance(pos, int) else pos[s:s + batch_size])
            yield batch, p, valid, None if labels is None else labels[s:s + batch_size], None
    elif isinstance(inputs, Iterable):
        if labels is not None or not isinstance(positions, int):
            raise ConfigError("collect_activations: with an iterable of batches, give each batch's "
                              "'labels' and 'positions' as keys of the batch dict")
        for batch in inputs:
            if not isinstance(batch, Mapping):
                raise ConfigError(f"collect_activations: a batch must be a dict of tensors, got {type(batch).__name__}")
            batch = dict(batch)
            lab = batch.pop("labels", None)
            p = batch.pop("positions", positions)
            b = _rows(batch, 0)
            if isinstance(p, int):
                p = [p] * b
            elif isinstance(p, torch.Tensor):
                p = p.reshape(-1).tolist() if p.dim() < 2 else p.tolist()
            _check_len(lab, b, "labels of a batch")
            _check_len(p, b, "positions of a batch")
            p, valid = _position_rows(p)
            yield batch, p, valid, lab, None
    else:
        raise ConfigError(
            f"collect_activations: inputs of type {type(inputs).__name__}; accepted: a list of texts "
            "(with tokenizer=), a dict of tensors, or an iterable of such dicts (one per batch)"
        )


def _position_rows(per_example) -> tuple[torch.Tensor, torch.Tensor]:
    """One int or a list of ints per example -> ``positions [B, P]`` (short rows padded with their
    first position) and ``valid [B, P]``."""
    rows = []
    for i, p in enumerate(per_example):
        if isinstance(p, torch.Tensor):
            p = p.tolist()
        row = [p] if isinstance(p, int) else list(p) if isinstance(p, (list, tuple)) else []
        if not row or not all(is_int(x) for x in row):
            raise ConfigError(f"collect_activations: positions of example {i} must be an int or a non-empty "
                              f"list of ints, got {p!r}")
        rows.append([_fits(int(x), f"position of example {i}") for x in row])
    width = max(len(r) for r in rows)
    valid = torch.tensor([[j < len(r) for j in range(width)] for r in rows], dtype=torch.bool)
    pos = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long)
    return pos, valid


def _positions_for_texts(texts, positions, tokenizer) -> list:
    if isinstance(positions, int):
        return [positions] * len(texts)
    if isinstance(positions, str) or (isinstance(positions, Sequence) and positions
                                      and all(isinstance(p, str) for p in positions)):
        return find_token_positions(texts, positions, tokenizer)
    positions = _as_positions(positions)
    if isinstance(positions, int):
        return [positions] * len(texts)
    _check_len(positions, len(texts), "positions")
    return positions


def _as_positions(positions) -> int | list:
    """``positions`` for tensors or texts: one int for all, or one entry per example."""
    if isinstance(positions, torch.Tensor):
        if positions.dtype.is_floating_point or positions.dtype.is_complex or positions.dtype == torch.bool:
            raise ConfigError(f"collect_activations: positions must hold integers, got a {positions.dtype} tensor")
        positions = positions.tolist()
    if is_int(positions):
        return _fits(int(positions), "positions")
    if isinstance(positions, (list, tuple)):
        return list(positions)
    raise ConfigError(
        f"collect_activations: positions must be an int, 'all', a word, or one entry per example (an "
        f"int or a list of ints), got {positions!r}"
    )


def _fits(p: int, what: str) -> int:
    if not -(2**63) <= p < 2**63:
        raise LocationError(f"collect_activations: {what} {p} is out of range")
    return p


def _check_len(values, n: int, label: str) -> None:
    if values is not None and len(values) != n:
        raise ShapeError(f"collect_activations: {label} has {len(values)} entries for {n} examples")


# -- labels --------------------------------------------------------------------------------------
def _label_ids(labels, class_names):
    if labels is None:
        return None
    out = []
    for x in labels:
        if isinstance(x, torch.Tensor):
            x = x.item()
        if isinstance(x, str):
            if class_names is None:
                raise ConfigError(f"collect_activations: label {x!r} is a string; pass class_names=")
            try:
                x = class_names.index(x)
            except ValueError:
                raise ConfigError(f"collect_activations: label {x!r} is not in class_names") from None
        elif class_names is not None and not 0 <= int(x) < len(class_names):
            raise ConfigError(f"collect_activations: label {x} is out of range for {len(class_names)} class_names")
        out.append(int(x))
    return out


def _project(site, acts, heads):
    """``[B, H_sel, head_dim]`` -> ``[B, H_sel, d_model]``: each head through the output projection alone."""
    b, n_sel, hd = acts.shape
    width = site.n_heads * hd
    x = acts.new_zeros(b, n_sel, width)
    cols = (torch.as_tensor(heads, device=acts.device)[:, None] * hd + torch.arange(hd, device=acts.device))
    x.scatter_(2, cols.expand(b, n_sel, hd), acts)  # head j's slice in place, other heads zero
    with torch.no_grad():
        return site.module(x) - site.module(acts.new_zeros(1, 1, width))  # minus the bias


# -- reading the sites ------------------------------------------------------------------------------
def _compile(model, sites, project_heads: bool):
    """One Collect intervention per site: ``(IntervenableModel, heads per site, column metadata)``."""
    from ..model import IntervenableModel

    reps = [RepresentationConfig(s.layer, s.component, "h.pos" if s.is_head else "pos",
                                 intervention_type="collect") for s in sites]
    im = IntervenableModel(IntervenableConfig(reps), model)
    site_meta, heads_of = {}, []
    for s, rs in zip(sites, im.sites):
        if s.is_head:
            n_heads = rs.n_heads
            heads = tuple(range(n_heads)) if s.heads is None else s.heads
            bad = [h for h in heads if not 0 <= h < n_heads]
            if bad:
                raise LocationError(
                    f"collect_activations: head {bad[0]} of site (layer {s.layer}, {s.component!r}) is out "
                    f"of range; the site has {n_heads} heads (accepted: 0..{n_heads - 1})"
                )
            heads_of.append(list(heads))
            if project_heads and s.component != "head_attention_value_output":
                raise ConfigError(
                    f"collect_activations: project_heads=True applies to 'head_attention_value_output' "
                    f"(the output projection's input), not {s.component!r}"
                )
            for h in heads:
                site_meta[s.column(h)] = {"layer": s.layer, "component": s.component, "head": h,
                                          "width": rs.head_dim, "module": rs.path,
                                          "projected": bool(project_heads)}
        else:
            heads_of.append(None)
            site_meta[s.column()] = {"layer": s.layer, "component": s.component, "head": None,
                                     "width": None, "module": rs.path}
    return im, heads_of, site_meta


def _read(im, sites, heads_of, batch, pos: torch.Tensor, project_heads: bool) -> dict[str, torch.Tensor]:
    """One forward: column -> ``[B, P, width]`` float32 on the CPU, at ``pos [B, P]``."""
    b, n_pos = pos.shape
    p = pos.tolist()
    locs = [p if heads is None else ([heads] * b, p) for heads in heads_of]
    with torch.no_grad():  # the pass stops after the last site: no later layer, no head
        collected = im.collect(batch, unit_locations={"base": locs})
    arrays = {}
    for s, rs, heads, acts in zip(sites, im.sites, heads_of, collected):
        if heads is None:  # [B, P, width]
            arrays[s.column()] = acts.detach().to("cpu", torch.float32)
            continue
        if project_heads:  # [B, H*P, head_dim], heads-major -> [B, H*P, d_model]
            acts = _project(rs, acts, [h for h in heads for _ in range(n_pos)])
        acts = acts.detach().to("cpu", torch.float32).reshape(b, len(heads), n_pos, -1)
        for j, h in enumerate(heads):
            arrays[s.column(h)] = acts[:, j]
    return arrays


def _check_sites(sites) -> list[ActivationSite]:
    if isinstance(sites, (ActivationSite, Mapping)) or (isinstance(sites, tuple) and sites and isinstance(sites[0], int)):
        sites = [sites]
    if not isinstance(sites, (list, tuple)):
        raise ConfigError(
            f"collect_activations: sites must be a (layer, component) pair, an ActivationSite, a dict, "
            f"or a list of them, got {sites!r}"
        )
    sites = [_as_site(s) for s in sites]
    if not sites:
        raise ConfigError("collect_activations: sites is empty")
    if len(set(sites)) != len(sites):
        raise ConfigError("collect_activations: a site is given twice")
    return sites


# -- the main function ----------------------------------------------------------------------
def collect_activations(model: nn.Module, inputs: Sequence[str] | Sequence[Sequence[int]]
                        | Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
                        sites: ActivationSite | tuple | Mapping | Sequence, *,
                        positions: int | str | Sequence | torch.Tensor = -1,
                        labels: Sequence[int | str] | torch.Tensor | None = None,
                        class_names: Sequence[str] | None = None,
                        tokenizer: PreTrainedTokenizerBase | None = None, batch_size: int = 32,
                        columns: Mapping | None = None, metadata: Mapping | None = None,
                        output_dir: str | os.PathLike | None = None, overwrite: bool = False,
                        project_heads: bool = False, progress: bool = False, skip_first: int = 0,
                        max_length: int | None = None) -> Dataset | dict[str, list[torch.Tensor]]:
    """Collect activations at ``sites``, in one of two modes.

    **Positions, streamed to Arrow** (``positions`` an int, a word, or one entry per example): the
    activations at each example's position(s) go batch by batch into an Arrow-backed
    ``datasets.Dataset``, one row per (example, position), so memory holds one batch whatever
    the number of examples.

    **Every token, in memory** (``positions="all"``, for prompt sets): a dict ``column ->
    [tensor [n_tokens_i, width] per prompt]`` of each prompt's real tokens (padding never
    enters), after dropping its first ``skip_first`` tokens. ``inputs`` are texts (tokenized one
    by one without special tokens, cut at ``max_length``) or lists of token ids; prompts run
    right-padded in batches. ``model`` may also be an :class:`~pyvene_like.IntervenableModel`
    (its wrapped model is read). The dataset-only arguments (``labels``, ``class_names``,
    ``columns``, ``metadata``, ``output_dir``, ``overwrite``) are refused in this mode.

    Under a launch of several processes (``torchrun``, ``accelerate launch``) every process
    calls it and batch ``i`` is run by process ``i mod N``: in the Arrow mode each writes its
    part and the main process merges them in input order; in memory the batches are gathered,
    so every process returns all prompts, in order.

    * ``inputs``: a list of texts (with ``tokenizer=``; padded per batch), a dict of tensors
      (split into ``batch_size`` rows), or an iterable of batch dicts that may carry their own
      ``"labels"`` and ``"positions"`` (for data that does not fit in memory).
    * ``sites``: ``(layer, component)`` or ``(layer, component, heads)``. Head components
      (``head_attention_value_output``: each head's output before the output projection,
      ``head_query_output``, ...) give one column per head, every head by default.
    * ``positions``: an int (negative from the end of each text), one entry per example (an int,
      or a list of ints for several positions of that example), or a word (or one per example)
      found with :class:`~pyvene_like.analysis.TokenFinder` (its last token). For texts they
      index each text's own encoding; with a left-padding tokenizer they are shifted, and models
      that take ``position_ids`` get them counted from each text's first real token (as
      ``generate`` does), so each text reads as it would alone. For tensors, positions index
      the row.
    * ``labels``: one per example (ints, or strings with ``class_names``); ``columns``: more
      per-example columns; ``metadata``: JSON-able facts about the whole dataset. An example with
      several positions repeats its label, columns and text on each of its rows.

    ``project_heads=True`` turns each head's ``head_attention_value_output`` (``head_dim``
    wide) into what the head adds to the attention output: the output projection applied to
    that head's slice alone, minus the projection's bias (TransformerLens's ``hook_result``;
    summed over heads plus the bias it gives the attention output).

    The dataset is written to ``output_dir`` (a new temporary folder by default) as
    ``activations.arrow`` and memory-mapped from there.
    """
    if isinstance(positions, str) and positions == "all":
        given = {"labels": labels, "class_names": class_names, "columns": columns, "metadata": metadata,
                 "output_dir": output_dir}
        extra = [k for k, v in given.items() if v is not None] + (["overwrite"] if overwrite else [])
        if extra:
            raise ConfigError(
                f"collect_activations: {', '.join(extra)} only apply to the Arrow dataset; "
                f"positions='all' returns every token's activations in memory"
            )
        return _collect_tokens(model, inputs, _check_sites(sites), tokenizer=tokenizer, batch_size=batch_size,
                               skip_first=skip_first, max_length=max_length, project_heads=project_heads)
    if skip_first or max_length is not None:
        raise ConfigError("collect_activations: skip_first and max_length apply to positions='all' (every "
                          "token in memory); name the positions to keep instead")
    return _collect_to_arrow(model, inputs, _check_sites(sites), positions=positions, labels=labels,
                             class_names=class_names, tokenizer=tokenizer, batch_size=batch_size,
                             columns=columns, metadata=metadata, output_dir=output_dir, overwrite=overwrite,
                             project_heads=project_heads, progress=progress)


def _collect_to_arrow(model, inputs, sites, *, positions, labels, class_names, tokenizer, batch_size,
                      columns, metadata, output_dir, overwrite, project_heads, progress):
    import pyarrow as pa
    from datasets import ClassLabel, Dataset, DatasetInfo, Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    from ..serialization import model_identity

    check_positive_int(batch_size, "collect_activations: batch_size")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
    elif labels is not None and len(labels) and all(isinstance(x, str) for x in labels):
        class_names = sorted({str(x) for x in labels})
    labels = _label_ids(labels, class_names)
    columns = dict(columns or {})
    clash = _RESERVED.intersection(columns)
    if clash:
        raise ConfigError(f"collect_activations: columns {sorted(clash)} are reserved ({sorted(_RESERVED)})")
    if metadata is not None:
        try:
            json.dumps(dict(metadata))
        except TypeError as e:
            raise ConfigError(f"collect_activations: metadata must be JSON-serialisable: {e}") from None

    im, heads_of, site_meta = _compile(model, sites, project_heads)
    state = process_state()  # several processes: batch i is read by process i % processes
    world, rank = (state.num_processes, state.process_index) if state is not None else (1, 0)
    if output_dir is not None:
        out_dir = Path(output_dir)
    else:
        made = [tempfile.mkdtemp(prefix="pyvene_like_acts_") if rank == 0 else None]
        if state is not None:  # one folder for every process: the main process's
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(made)
        out_dir = Path(made[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "activations.arrow"
    if path.exists() and not overwrite:
        raise ConfigError(f"collect_activations: {path} exists; pass overwrite=True or another output_dir")
    own_path = path if world == 1 else out_dir / f"activations-{rank:05d}-of-{world:05d}.arrow"

    writer = features = None
    n_written = n_rows = 0
    batch_rows: list[int] = []  # rows of every batch, for merging the processes' files in order
    has_labels = has_text = None
    try:
        takes_position_ids = "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes_position_ids = False
    batches = _batches(inputs, tokenizer, batch_size, positions, labels, takes_position_ids)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="collect_activations", unit="batch")
    try:
        for i, (batch, pos, valid, lab, texts) in enumerate(batches):
            # Every process walks every batch (example numbers and row counts stay global) and
            # runs the model on its own share.
            b = pos.shape[0]
            flat = valid.all().item()
            lab_ids = _label_ids(lab, class_names) if labels is None else lab
            if has_labels is None:
                has_labels, has_text = lab_ids is not None, texts is not None
            elif has_labels != (lab_ids is not None):
                raise ConfigError(f"collect_activations: labels are missing from some batches (batch at example {n_written})")
            rows = pos.numel() if flat else int(valid.sum())
            batch_rows.append(rows)
            if i % world != rank:
                n_written += b
                n_rows += rows
                continue
            arrays = _read(im, sites, heads_of, batch, pos, project_heads)
            # one row per (example, position): [B, P, width] -> [rows, width]
            arrays = {c: a.reshape(-1, a.shape[-1]) if flat else a[valid] for c, a in arrays.items()}
            example = torch.arange(n_written, n_written + b)[:, None].expand_as(pos)
            example, row_pos = (example.reshape(-1), pos.reshape(-1)) if flat else (example[valid], pos[valid])
            if writer is None:
                feats = {c: List(Value("float32"), length=a.shape[1]) for c, a in arrays.items()}
                for c, a in arrays.items():
                    site_meta[c]["width"] = a.shape[1]
                if has_labels:
                    feats["label"] = ClassLabel(names=class_names) if class_names else Value("int64")
                feats["example"] = Value("int64")
                feats["position"] = Value("int64")
                if has_text:
                    feats["text"] = Value("string")
                features = Features(feats)
                writer = ArrowWriter(features=features, path=str(own_path))
            cols = {c: pa.FixedSizeListArray.from_arrays(pa.array(a.numpy().reshape(-1)), a.shape[1])
                    for c, a in arrays.items()}
            local = (example - n_written).tolist()
            if has_labels:
                cols["label"] = pa.array([int(lab_ids[i]) for i in local], pa.int64())
            cols["example"] = pa.array(example.tolist(), pa.int64())
            cols["position"] = pa.array(row_pos.tolist(), pa.int64())
            if has_text:
                cols["text"] = pa.array([texts[i] for i in local], pa.string())
            table = pa.table(cols)
            writer.write_table(table.cast(features.arrow_schema))
            n_written += b
            n_rows += len(local)
        if n_written == 0:
            raise ConfigError("collect_activations: inputs hold no examples")
        if writer is not None:
            writer.finalize()
    finally:
        if writer is not None:
            writer.close()
    if state is not None:
        state.wait_for_everyone()
        if rank == 0:  # batch 0 is the main process's, so it knows the features
            _merge_shards(out_dir, path, world, batch_rows, features)
        state.wait_for_everyone()

    doc = {
        "format": FORMAT,
        "model": model_identity(model),
        "sites": [{"layer": s.layer, "component": s.component, "heads": h} for s, h in zip(sites, heads_of)],
        "columns": site_meta,
        "class_names": class_names,
        "num_examples": n_written,
        "metadata": dict(metadata or {}),
    }
    if n_rows != n_written:
        doc["num_rows"] = n_rows
    ds = Dataset.from_file(str(path), info=DatasetInfo(description=json.dumps(doc), features=features))
    if columns:
        example = ds["example"] if n_rows != n_written else None
        for c, v in columns.items():
            v = list(v)
            _check_len(v, n_written, f"column {c!r}")
            ds = ds.add_column(c, v if example is None else [v[i] for i in example])
    return ds


def _merge_shards(out_dir: Path, path: Path, world: int, batch_rows: list[int], features) -> None:
    """The processes' Arrow files (batch ``i`` in the file of process ``i % world``) into one
    file at ``path``, batches in input order, one batch in memory at a time; the parts are removed."""
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    parts = [out_dir / f"activations-{r:05d}-of-{world:05d}.arrow" for r in range(world)]
    tables = [Dataset.from_file(str(p)).data if p.exists() else None for p in parts]
    offsets = [0] * world
    writer = ArrowWriter(features=features, path=str(path))
    try:
        for i, rows in enumerate(batch_rows):
            r = i % world
            writer.write_table(tables[r].slice(offsets[r], rows).table)
            offsets[r] += rows
        writer.finalize()
    finally:
        writer.close()
    del tables
    for p in parts:
        p.unlink(missing_ok=True)


# -- every token, in memory -------------------------------------------------------------------------
def _collect_tokens(model, prompts, sites, *, tokenizer, batch_size, skip_first, max_length,
                    project_heads) -> dict[str, list[torch.Tensor]]:
    from ..model import IntervenableModel

    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ConfigError(f"collect_activations: prompts must be a non-empty list, got {_describe(prompts)}")
    check_positive_int(batch_size, "collect_activations: batch_size")
    check_non_negative_int(skip_first, "collect_activations: skip_first")
    ids = _token_ids(prompts, tokenizer, max_length)
    for i, row in enumerate(ids):
        if len(row) <= skip_first:
            raise ConfigError(
                f"collect_activations: prompt {i} has {len(row)} tokens, none left after skip_first={skip_first}"
            )
    base_model = model.model if isinstance(model, IntervenableModel) else model
    im, heads_of, site_meta = _compile(base_model, sites, project_heads)
    device = next(base_model.parameters()).device
    state = process_state()  # several processes: batch i is read by process i % processes
    world, rank = (state.num_processes, state.process_index) if state is not None else (1, 0)
    read = []  # (batch number, its activations [batch, width, d] per column)
    for i, start in enumerate(range(0, len(ids), batch_size)):
        if i % world != rank:
            continue
        chunk = ids[start:start + batch_size]
        width = max(len(r) for r in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, row in enumerate(chunk):
            input_ids[j, :len(row)] = torch.as_tensor(row)
            mask[j, :len(row)] = 1
        pos = torch.arange(width).expand(len(chunk), width)
        read.append((i, _read(im, sites, heads_of, {"input_ids": input_ids.to(device),
                                                     "attention_mask": mask.to(device)}, pos, project_heads)))
    if state is not None:  # every process gets every batch, in order
        from accelerate.utils import gather_object

        read = sorted(gather_object(read), key=lambda item: item[0])
    out: dict[str, list[torch.Tensor]] = {c: [] for c in site_meta}
    for i, arrays in read:
        chunk = ids[i * batch_size:(i + 1) * batch_size]
        for c, acts in arrays.items():  # [batch, width, d]: right padding, so real tokens come first
            out[c].extend(acts[j, skip_first:len(row)] for j, row in enumerate(chunk))
    return out


def _token_ids(prompts, tokenizer, max_length):
    if all(isinstance(p, str) for p in prompts):
        if tokenizer is None:
            raise ConfigError("collect_activations: prompts are strings; give the tokenizer (tokenizer=...)")
        kw = {"truncation": True, "max_length": max_length} if max_length else {}
        return [list(tokenizer(p, add_special_tokens=False, **kw)["input_ids"]) for p in prompts]
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, torch.Tensor):
            p = p.tolist()
        if not isinstance(p, (list, tuple)) or not p or not all(is_int(t) for t in p):
            raise ConfigError(
                f"collect_activations: prompt {i} must be a string or a non-empty list of token ids, got {_describe(p)}"
            )
        rows.append(list(p)[:max_length] if max_length else list(p))
    return rows


def _describe(x) -> str:
    text = repr(x)
    return text if len(text) < 60 else f"{type(x).__name__} {text[:50]}..."


