"""Save and load only the codebooks of a model, with the base model's identity.

A codebook save is a folder (or Hub repo) of two files:

* ``codebooks.json`` -- library and format versions, the base model's identity
  (:func:`pyvene_like.serialization.model_identity`: Hub id, ``model_type``, a hash of its config)
  and, per codebook, its site (layer, component) and settings (``dim``, ``num_codes``, ``k``,
  ``num_groups``, ``similarity``, ``layer_norm``, ``eps``);
* ``codebooks.safetensors`` -- the codebooks' tensors, named ``<site>.<parameter>``.

The base model's weights are not saved: when ``train_model=True`` changed them, save them with
the model's own ``save_pretrained`` too. :func:`load_codebooks` puts the codebooks into a
model (wrapping it when it has none) and warns when the model is not the one they were saved
on. Files are read and written, and the base model checked, by
:mod:`pyvene_like.serialization`; a Hub repo is fetched by :func:`pyvene_like.hub.resolve_folder`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, LoadError, SiteError
from ..serialization import (
    LIBRARY,
    check_base_model,
    check_save_folder,
    load_tensors,
    make_folder,
    model_identity,
    read_json,
    save_tensors,
    write_json,
)
from ..sites import HEAD_COMPONENTS, ModelLayout, resolve_site
from ..validation import check_non_negative_int, check_number, check_positive_int, is_int
from ..version import __version__
from .layer import CodebookLayer
from .wrap import (
    ATTRIBUTE,
    CodebookSet,
    get_codebooks,
    module_key,
    site_name,
    unwrap_codebook,
    wrap_codebook,
)

CODEBOOK_CONFIG = "codebooks.json"
CODEBOOK_WEIGHTS = "codebooks.safetensors"
FORMAT_VERSION = 1
_SETTINGS = ("dim", "num_codes", "k", "num_groups", "similarity", "layer_norm", "eps")


def save_codebooks(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write ``codebooks.json`` and ``codebooks.safetensors`` for the codebooks of ``model``."""
    cbs = get_codebooks(model)
    folder = check_save_folder(save_directory, "save_codebooks", CODEBOOK_CONFIG)
    entries, tensors = [], {}
    for name, cs in cbs.sites().items():
        cb = cbs[module_key(name)]
        entries.append({"name": name, "layer": cs.layer, "component": cs.component,
                        **{k: getattr(cb, k) for k in _SETTINGS}})
        for pname, p in cb.named_parameters():
            tensors[f"{name}.{pname}"] = p
    doc = {"library": LIBRARY, "library_version": __version__, "format_version": FORMAT_VERSION,
           "kind": "codebooks", "base_model": model_identity(model), "codebooks": entries}
    make_folder(folder, "save_codebooks")
    digest = save_tensors(tensors, folder / CODEBOOK_WEIGHTS)
    doc["weights"] = {"file": CODEBOOK_WEIGHTS, "sha256": digest}
    write_json(folder / CODEBOOK_CONFIG, doc)
    return folder


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    path, doc = read_json(folder, CODEBOOK_CONFIG, "load_codebooks", "save_codebooks")
    if not isinstance(doc, dict) or doc.get("library") != LIBRARY or doc.get("kind") != "codebooks":
        raise LoadError(f"{path}: not a pyvene_like codebook save (written by save_codebooks)")
    fmt = doc.get("format_version")
    if not is_int(fmt) or not 1 <= fmt <= FORMAT_VERSION:
        raise LoadError(f"{path}: format_version {fmt!r} is not one this pyvene_like reads (1..{FORMAT_VERSION})")
    if not isinstance(doc.get("codebooks"), list) or not doc["codebooks"]:
        raise LoadError(f"{path}: field 'codebooks' must be a non-empty list")
    wpath = folder / CODEBOOK_WEIGHTS
    if not wpath.is_file():
        raise LoadError(f"load_codebooks: {wpath} is missing; copy or download it again")
    record = doc.get("weights")  # as for interventions: absent means no digest to check
    if record is not None and (not isinstance(record, dict) or not isinstance(record.get("sha256", ""), str)):
        raise LoadError(f"{path}: field 'weights' must be an object with the weights file's 'sha256' "
                        f"(a string), got {record!r}")
    tensors = load_tensors(wpath, caller="load_codebooks", sha256=(record or {}).get("sha256"),
                           recorded_in=CODEBOOK_CONFIG, fix="copy or download it again, or save again")
    return doc, tensors


_REQUIRED = {"name": "a string", "layer": "a non-negative int", "component": "a string",
             "num_codes": "a positive int", "k": "a positive int", "num_groups": "a positive int",
             "similarity": "a string", "layer_norm": "true or false"}
_OPTIONAL = {"dim": "a positive int", "eps": "a positive number"}


def _check_field(where: str, what: str, value: object) -> None:
    """``value`` is ``what`` (a kind from ``_REQUIRED`` / ``_OPTIONAL``), else a LoadError at ``where``."""
    if what == "a positive int":
        check_positive_int(value, where, error=LoadError)
    elif what == "a non-negative int":
        check_non_negative_int(value, where, error=LoadError)
    elif what == "a positive number":
        check_number(value, where, positive=True, error=LoadError)
    elif not isinstance(value, str if what == "a string" else bool):
        raise LoadError(f"{where} must be {what}, got {value!r}")


def _check_entries(path: Path, entries: list) -> None:
    """Every entry of ``codebooks`` names its site and settings with the right types, once."""
    seen = set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise LoadError(f"{path}: codebooks[{i}] must be an object with the codebook's site and "
                            f"settings, got {e!r}")
        for key, what in _REQUIRED.items():
            _check_field(f"{path}: codebooks[{i}] field {key!r}", what, e.get(key))
        for key, what in _OPTIONAL.items():
            if key in e:
                _check_field(f"{path}: codebooks[{i}] field {key!r}", what, e[key])
        if e["name"] != site_name(e["layer"], e["component"]):
            raise LoadError(f"{path}: codebooks[{i}] is named {e['name']!r}, but its site (layer {e['layer']}, "
                            f"component {e['component']!r}) is named {site_name(e['layer'], e['component'])!r}")
        if e["name"] in seen:
            raise LoadError(f"{path}: codebooks[{i}]: site {e['name']!r} appears twice; each site holds one codebook")
        seen.add(e["name"])


def _planned_layers(model: nn.Module, path: Path, entries: list[dict]) -> dict[str, CodebookLayer]:
    """The codebooks ``wrap_codebook`` would build for ``entries`` (name -> layer), each on its own
    tensor of ``model``, or a LoadError saying why this model cannot hold them."""
    layout = ModelLayout(model)
    layers, sites = {}, {}
    for e in entries:
        site, layers[e["name"]] = _planned_layer(model, layout, path, e)
        for other, s in sites.items():
            if s.module is site.module and s.io == site.io and (
                (s.columns is None and site.columns is None)
                or (s.columns is not None and site.columns is not None and torch.equal(s.columns, site.columns))
            ):
                raise LoadError(
                    f"{path}: codebooks {other!r} and {e['name']!r} sit on the same tensor "
                    f"({site.description}); each site holds one codebook"
                )
        sites[e["name"]] = site
    return layers


def _planned_layer(model: nn.Module, layout: ModelLayout, path: Path, e: dict):
    """The codebook ``wrap_codebook`` would build for entry ``e``, on the meta device (no memory,
    no random numbers), or a LoadError saying why this model cannot hold it."""
    is_head = e["component"].rpartition(".")[2] in HEAD_COMPONENTS
    try:
        site = resolve_site(layout, e["layer"], e["component"], "h" if is_head else "pos")
    except SiteError as err:
        raise LoadError(
            f"{path}: codebook {e['name']!r} sits at layer {e['layer']}, component {e['component']!r}, "
            f"which {type(model).__name__} does not have: {err}"
        ) from err
    dim = site.width
    groups = site.n_heads if is_head else e["num_groups"]
    if dim is None or groups is None:
        raise LoadError(
            f"{path}: codebook {e['name']!r}: cannot tell the {'width' if dim is None else 'number of heads'} "
            f"of {site.description} on {type(model).__name__}, so no codebook can be placed there"
        )
    for key, have in (("dim", dim), ("num_groups", groups)):
        if key in e and e[key] != have:
            raise LoadError(
                f"{path}: codebook {e['name']!r} was saved with {key}={e[key]!r}, but its site "
                f"{site.description} on this model gives {key}={have!r}"
            )
    try:
        with torch.device("meta"):
            return site, CodebookLayer(dim, e["num_codes"], e["k"], groups,
                                 similarity=e["similarity"], layer_norm=e["layer_norm"],
                                 eps=e.get("eps", 1e-5), name=e["name"])
    except ConfigError as err:
        raise LoadError(f"{path}: codebook {e['name']!r}: {err}") from err


def _check_tensors(weights: Path, tensors: dict, layers: dict[str, nn.Module]) -> None:
    """The file holds exactly the parameters of ``layers`` (name -> codebook), with their shapes."""
    expected = {f"{name}.{pname}": p for name, cb in layers.items() for pname, p in cb.named_parameters()}
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise LoadError(f"{weights}: tensor {missing[0]!r} is missing (the file lacks {sorted(missing)})")
    extra = sorted(k for k in tensors if k not in expected)
    if extra:
        raise LoadError(f"{weights}: tensors {extra} belong to no codebook in {CODEBOOK_CONFIG}; accepted: "
                        f"{sorted(expected)}")
    for key, p in expected.items():
        t = tensors[key]
        if t.shape != p.shape:
            raise LoadError(
                f"{weights}: tensor {key!r} has shape {tuple(t.shape)}, the codebook expects {tuple(p.shape)}"
            )
        if not t.is_floating_point():
            raise LoadError(f"{weights}: tensor {key!r} has dtype {t.dtype}; accepted: a floating-point dtype")


def load_codebooks(model: nn.Module, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                   token: str | bool | None = None) -> nn.Module:
    """Load codebooks saved by :func:`save_codebooks` into ``model`` (in place) and return it.

    A model without codebooks is wrapped at the saved sites first; a wrapped model must have
    codebooks at exactly those sites with the same settings. ``path_or_repo_id``: a folder or
    a Hub repo id (fetched with ``huggingface_hub``, from the cache when offline).

    All or nothing: the files (JSON, settings, tensor names, shapes and dtypes) and the sites on
    ``model`` are checked before the model is touched, so a failed load leaves it as it was
    (no ``model.codebooks``, no hooks, same parameters).
    """
    from ..hub import resolve_folder

    if not isinstance(model, nn.Module):
        raise ConfigError(f"load_codebooks: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise ConfigError(
            f"load_codebooks: expected a folder path or a Hub repo id, got {type(path_or_repo_id).__name__}"
        )
    folder = resolve_folder(path_or_repo_id, revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token,
                            allow_patterns=[CODEBOOK_CONFIG, CODEBOOK_WEIGHTS], what="load_codebooks")
    doc, tensors = _read(folder)
    path, weights = folder / CODEBOOK_CONFIG, folder / CODEBOOK_WEIGHTS
    entries = doc["codebooks"]
    _check_entries(path, entries)
    saved_names = [e["name"] for e in entries]
    existing = getattr(model, ATTRIBUTE, None)
    if existing is None:
        layers = _planned_layers(model, path, entries)
    else:
        if not isinstance(existing, CodebookSet):
            raise ConfigError(
                f"load_codebooks: {type(model).__name__} already has an attribute {ATTRIBUTE!r} that is not "
                f"a CodebookSet; cannot load codebooks into it"
            )
        cbs = get_codebooks(model)
        if sorted(cbs.names()) != sorted(saved_names):
            raise ConfigError(
                f"load_codebooks: the model has codebooks at {cbs.names()} but {path} holds codebooks at "
                f"{saved_names}; unwrap the model (unwrap_codebook) or wrap it at the saved sites"
            )
        layers = {}
        for e in entries:
            cb = layers[e["name"]] = cbs[module_key(e["name"])]
            for key in _SETTINGS:
                if key in e and getattr(cb, key) != e[key]:
                    raise ConfigError(
                        f"load_codebooks: codebook {e['name']}: saved with {key}={e[key]!r}, but the model's "
                        f"codebook has {key}={getattr(cb, key)!r}"
                    )
    _check_tensors(weights, tensors, layers)
    check_base_model(path, doc.get("base_model"), model, what="codebooks", verb="trained",
                     consequence="their codes may mean nothing there", stacklevel=3)

    # Everything is checked: only now is the model changed.
    try:
        if existing is None:
            for e in entries:
                # seed: the codes are overwritten below; a local generator leaves torch's global
                # random state as it was.
                wrap_codebook(model, [(e["layer"], e["component"])], num_codes=e["num_codes"], k=e["k"],
                              similarity=e["similarity"], layer_norm=e["layer_norm"],
                              num_codebooks=e["num_groups"], seed=0)
            cbs = get_codebooks(model)
            for e in entries:
                cb = cbs[module_key(e["name"])]
                cb.eps = float(e.get("eps", cb.eps))
            layers = {e["name"]: cbs[module_key(e["name"])] for e in entries}
        with torch.no_grad():
            for name, cb in layers.items():
                for pname, p in cb.named_parameters():
                    p.copy_(tensors[f"{name}.{pname}"].to(device=p.device, dtype=p.dtype))
    except BaseException:
        if existing is None and isinstance(getattr(model, ATTRIBUTE, None), CodebookSet):
            unwrap_codebook(model)
        raise
    return model
