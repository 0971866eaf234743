"""Activation datasets: Collect interventions streamed to an Arrow file.

``collect_activations`` compiles one Collect intervention per site into an
:class:`~pyvene_like.IntervenableModel`, runs the examples batch by batch (one forward per
batch) and appends each batch's activations to an Arrow file with ``datasets``'
``ArrowWriter``. The returned :class:`datasets.Dataset` memory-maps that file, so memory
holds one batch whatever the number of examples.

Columns: one per site and head (``"L3.block_output"``, ``"L3.head_attention_value_output.H5"``:
fixed-length float32 lists), ``label`` (a ``ClassLabel`` when class names are known),
``example``, ``position``, ``text`` for text inputs, and any user ``columns``. What is true
of the whole dataset (model identity, sites, class names, the user's ``metadata``) is JSON in
``dataset.info.description``; :func:`activation_metadata` reads it back.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import IntervenableConfig, RepresentationConfig
from ..errors import ConfigError, LocationError, ShapeError, SiteError
from ..sites import HEAD_COMPONENTS
from .tokens import find_token_positions

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


def activation_metadata(dataset) -> dict:
    """The metadata :func:`collect_activations` stored with ``dataset`` (a dict)."""
    try:
        doc = json.loads(dataset.info.description or "")
    except (ValueError, AttributeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError("activation_metadata: this dataset was not written by collect_activations")
    return doc


def activation_columns(dataset) -> list[str]:
    """The activation columns of a dataset written by :func:`collect_activations`, in order."""
    return list(activation_metadata(dataset)["columns"])


# -- inputs --------------------------------------------------------------------------------------
def _rows(mapping, n: int):
    for v in mapping.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    return n


def _batches(inputs, tokenizer, batch_size: int, positions, labels, takes_position_ids: bool = False):
    """Yield ``(model_inputs, positions [B] in batch coordinates, labels or None, texts or None)``."""
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
            p = torch.as_tensor(pos[s:s + batch_size], dtype=torch.long)
            p = torch.where(p < 0, p + lengths, p)
            if ((p < 0) | (p >= lengths)).any():
                i = int(((p < 0) | (p >= lengths)).nonzero()[0])
                raise LocationError(f"collect_activations: position {pos[s + i]} is out of range for text "
                                    f"{s + i} ({int(lengths[i])} tokens)")
            enc = dict(enc)
            if getattr(tokenizer, "padding_side", "right") == "left":
                p = p + (enc["input_ids"].shape[1] - lengths)
                if mask is not None and takes_position_ids and (mask == 0).any():
                    # As HF generate does: real tokens count positions from 0, so each
                    # example reads as it would alone.
                    enc["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
            yield enc, p, None if labels is None else labels[s:s + batch_size], texts
    elif isinstance(inputs, (Mapping, torch.Tensor)):
        inputs = {"input_ids": inputs} if isinstance(inputs, torch.Tensor) else dict(inputs)
        n = _rows(inputs, 0)
        pos = positions if isinstance(positions, int) else list(positions)
        _check_len(None if isinstance(pos, int) else pos, n, "positions")
        _check_len(labels, n, "labels")
        for s in range(0, n, batch_size):
            batch = {k: v[s:s + batch_size] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                     for k, v in inputs.items()}
            b = _rows(batch, 0)
            p = torch.full((b,), pos) if isinstance(pos, int) else torch.as_tensor(pos[s:s + batch_size])
            yield batch, p, None if labels is None else labels[s:s + batch_size], None
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
            p = torch.full((b,), p) if isinstance(p, int) else torch.as_tensor(p).reshape(-1)
            _check_len(lab, b, "labels of a batch")
            _check_len(p, b, "positions of a batch")
            yield batch, p, lab, None
    else:
        raise ConfigError(
            f"collect_activations: inputs of type {type(inputs).__name__}; accepted: a list of texts "
            "(with tokenizer=), a dict of tensors, or an iterable of such dicts (one per batch)"
        )


def _positions_for_texts(texts, positions, tokenizer) -> list:
    if isinstance(positions, int):
        return [positions] * len(texts)
    if isinstance(positions, str) or (isinstance(positions, Sequence) and positions
                                      and all(isinstance(p, str) for p in positions)):
        return find_token_positions(texts, positions, tokenizer)
    positions = list(positions)
    _check_len(positions, len(texts), "positions")
    return positions


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


# -- the main function ----------------------------------------------------------------------
def collect_activations(model, inputs, sites, *, positions=-1, labels=None, class_names=None,
                        tokenizer=None, batch_size: int = 32, columns: Mapping | None = None,
                        metadata: Mapping | None = None, output_dir=None, overwrite: bool = False,
                        project_heads: bool = False, progress: bool = False):
    """Collect activations at ``sites`` and ``positions`` into an Arrow-backed ``datasets.Dataset``.

    * ``inputs``: a list of texts (with ``tokenizer=``; padded per batch), a dict of tensors
      (split into ``batch_size`` rows), or an iterable of batch dicts that may carry their own
      ``"labels"`` and ``"positions"`` (for data that does not fit in memory).
    * ``sites``: ``(layer, component)`` or ``(layer, component, heads)``. Head components
      (``head_attention_value_output``: each head's output before the output projection,
      ``head_query_output``, ...) give one column per head, every head by default.
    * ``positions``: one token per example: an int (negative from the end of each text), one
      int per example, or a word (or one per example) found with
      :class:`~pyvene_like.analysis.TokenFinder` (its last token). For texts they index each
      text's own encoding; with a left-padding tokenizer they are shifted, and models that take
      ``position_ids`` get them counted from each text's first real token (as ``generate``
      does), so each text reads as it would alone. For tensors, positions index the row.
    * ``labels``: one per example (ints, or strings with ``class_names``); ``columns``: more
      per-example columns; ``metadata``: JSON-able facts about the whole dataset.

    ``project_heads=True`` turns each head's ``head_attention_value_output`` (``head_dim``
    wide) into what the head adds to the attention output: the output projection applied to
    that head's slice alone, minus the projection's bias (TransformerLens's ``hook_result``;
    summed over heads plus the bias it gives the attention output).

    The dataset is written to ``output_dir`` (a new temporary folder by default) as
    ``activations.arrow`` and memory-mapped from there.
    """
    import pyarrow as pa
    from datasets import ClassLabel, Dataset, DatasetInfo, Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    from ..hub import model_identity
    from ..model import IntervenableModel

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"collect_activations: batch_size={batch_size!r}; accepted: an int >= 1")
    if isinstance(sites, (ActivationSite, Mapping)) or (isinstance(sites, tuple) and sites and isinstance(sites[0], int)):
        sites = [sites]
    sites = [_as_site(s) for s in sites]
    if not sites:
        raise ConfigError("collect_activations: sites is empty")
    if len(set(sites)) != len(sites):
        raise ConfigError("collect_activations: a site is given twice")
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

    out_dir = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="pyvene_like_acts_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "activations.arrow"
    if path.exists() and not overwrite:
        raise ConfigError(f"collect_activations: {path} exists; pass overwrite=True or another output_dir")

    writer = None
    n_written = 0
    has_labels = has_text = None
    try:
        takes_position_ids = "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes_position_ids = False
    batches = _batches(inputs, tokenizer, batch_size, positions, labels, takes_position_ids)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="collect_activations", unit="batch")
    try:
        for batch, pos, lab, texts in batches:
            b = pos.shape[0]
            locs = []
            for heads in heads_of:
                p = [[int(x)] for x in pos]
                locs.append(p if heads is None else ([heads] * b, p))
            with torch.no_grad():
                out = im(batch, unit_locations={"base": locs}, return_dict=True)
            arrays = {}
            for s, rs, heads, acts in zip(sites, im.sites, heads_of, out.collected_activations):
                if heads is not None and project_heads:
                    acts = _project(rs, acts, heads)
                acts = acts.detach().to("cpu", torch.float32)  # [B, 1, width] or [B, heads, head_dim]
                if heads is None:
                    arrays[s.column()] = acts[:, 0]
                else:
                    for j, h in enumerate(heads):
                        arrays[s.column(h)] = acts[:, j]
            lab_ids = _label_ids(lab, class_names) if labels is None else lab
            if has_labels is None:
                has_labels, has_text = lab_ids is not None, texts is not None
            elif has_labels != (lab_ids is not None):
                raise ConfigError(f"collect_activations: labels are missing from some batches (batch at example {n_written})")
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
                writer = ArrowWriter(features=features, path=str(path))
            cols = {c: pa.FixedSizeListArray.from_arrays(pa.array(a.numpy().reshape(-1)), a.shape[1])
                    for c, a in arrays.items()}
            if has_labels:
                cols["label"] = pa.array(lab_ids, pa.int64())
            cols["example"] = pa.array(range(n_written, n_written + b), pa.int64())
            cols["position"] = pa.array(pos.tolist(), pa.int64())
            if has_text:
                cols["text"] = pa.array(texts, pa.string())
            table = pa.table(cols)
            writer.write_table(table.cast(features.arrow_schema))
            n_written += b
        if writer is None:
            raise ConfigError("collect_activations: inputs hold no examples")
        writer.finalize()
    finally:
        if writer is not None:
            writer.close()

    doc = {
        "format": FORMAT,
        "model": model_identity(model),
        "sites": [{"layer": s.layer, "component": s.component, "heads": h} for s, h in zip(sites, heads_of)],
        "columns": site_meta,
        "class_names": class_names,
        "num_examples": n_written,
        "metadata": dict(metadata or {}),
    }
    ds = Dataset.from_file(str(path), info=DatasetInfo(description=json.dumps(doc), features=features))
    for c, v in columns.items():
        v = list(v)
        _check_len(v, n_written, f"column {c!r}")
        ds = ds.add_column(c, v)
    return ds


__all__ = ["ActivationSite", "activation_columns", "activation_metadata", "collect_activations"]
