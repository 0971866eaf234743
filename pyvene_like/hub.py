"""The Hugging Face Hub: fetch a save (a folder or a Hub repo) and share one.

Everything about files lives in :mod:`pyvene_like.serialization`; this module only moves them:

* :func:`resolve_folder` -- a local folder, or the snapshot of a Hub repo (downloaded, or from
  the cache when offline) restricted to the files asked for;
* :func:`resolve_file` -- one file of a local folder or of a Hub repo (SAE weights);
* :func:`push_to_hub` -- save into a temporary folder and upload it;
* :func:`model_card` -- the ``README.md`` written next to a save.

Both resolvers translate the Hub's errors in one place (:func:`_hub_errors`): offline or not
cached, no such repo, no such revision, no such file -- each a :class:`~pyvene_like.LoadError`
naming what was asked for and where it was looked for.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from .errors import ConfigError, LoadError, PyveneLikeWarning
from .serialization import (  # noqa: F401  (some re-exported: the names were public here before)
    CARD_NAME,
    CONFIG_NAME,
    FORMAT_VERSION,
    LIBRARY,
    WEIGHTS_NAME,
    describe,
    hub_model_id,
    load_interventions,
    model_identity,
    read_config,
    read_json,
    read_weights,
    write_interventions,
)
from .validation import check_path
from .version import __version__

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, HfApi, ModelCard


# -- saving (the files, then the card) -----------------------------------------------------------
def save_pretrained(im: nn.Module, save_directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
    """Write ``config.json``, ``interventions.safetensors`` and ``README.md`` into a folder.

    ``repo_id`` only goes into the model card's usage snippet. Returns the folder.
    """
    card = Path(save_directory) / CARD_NAME if isinstance(save_directory, (str, os.PathLike)) else None
    # A README.md of the user's own (saving into a project folder) is kept, as
    # huggingface_hub's ModelHubMixin does; only a card written by this library is replaced.
    keep = card is not None and card.is_file() and not _is_our_card(card)
    folder, doc = write_interventions(im, save_directory)
    if keep:
        warnings.warn(
            f"save_pretrained: {str(card)!r} already exists and is not a pyvene_like model card; "
            f"it was kept (the config and weights were written next to it)",
            PyveneLikeWarning, stacklevel=3,
        )
    else:
        model_card(doc, repo_id=repo_id).save(folder / CARD_NAME)
    return folder


def _is_our_card(path: Path) -> bool:
    try:
        return f"library_name: {LIBRARY}" in path.read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return False


def load_pretrained(path_or_repo_id: str | os.PathLike, model: nn.Module, *, cls: type[nn.Module],
                    functions: dict | None = None, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                    token: str | bool | None = None) -> nn.Module:
    """Fetch a save (folder or Hub repo) and rebuild it on ``model`` as a ``cls`` (the
    IntervenableModel class, passed in so that this module does not import the model) with
    :func:`pyvene_like.serialization.load_interventions`."""
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise ConfigError(
            f"from_pretrained: expected a folder path or a Hub repo id ('owner/name'), got "
            f"{type(path_or_repo_id).__name__}"
        )
    check_path(path_or_repo_id, "from_pretrained: path_or_repo_id")  # '' would read the current directory
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"from_pretrained: model must be the base torch.nn.Module to intervene on, got "
            f"{type(model).__name__}; load it first (e.g. AutoModelForCausalLM.from_pretrained(...))"
        )
    folder = resolve_folder(path_or_repo_id, revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token)
    return load_interventions(folder, model, cls=cls, functions=functions)


# -- fetching ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _hub_errors(what: str, repo_id: str, *, revision, cache_dir, local_files_only: bool,
                filename: str | None = None, subfolder: str | None = None):
    """Turn huggingface_hub's download errors into LoadErrors naming what and where.

    Used by both resolvers: the one place that knows the Hub's exception types. A failure to
    reach the Hub at all (no network, DNS, proxy, timeout: huggingface_hub keeps the transport's
    error as the cause) is said as such, not as a missing file."""
    repo = f"Hub repo {repo_id!r}" + (f", subfolder {subfolder!r}" if subfolder else "")
    subject = f"{filename!r} of {repo}" if filename else repo
    try:
        yield
    except Exception as e:  # noqa: BLE001 - sorted by _translate; the rest goes on unchanged
        conn = None if local_files_only else connection_failure(e)
        if conn is not None:
            raise unreachable(what, subject, conn) from None
        _translate(e, what, repo_id, repo, subject, revision=revision, cache_dir=cache_dir,
                   local_files_only=local_files_only, filename=filename)


def _translate(e: Exception, what, repo_id, repo, subject, *, revision, cache_dir, local_files_only,
               filename):
    """Raise the LoadError for one of huggingface_hub's download errors (or ``e`` itself)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        raise e
    except HFValidationError as e:
        raise LoadError(
            f"{what}: {repo_id!r} is neither a local folder nor a valid Hub repo id ('owner/name'): {e}"
        ) from None
    except IncompleteSnapshotError as e:
        raise LoadError(f"{what}: the cached copy of {repo} is incomplete: {e}") from None
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is a subclass of it
        if local_files_only:
            why = "local_files_only=True"
        elif constants.is_offline_mode():
            why = "offline mode is on (HF_HUB_OFFLINE=1)"
        else:
            why = "the Hub could not be reached"
        where = str(cache_dir or constants.HF_HUB_CACHE)
        raise LoadError(
            f"{what}: {subject} (revision {revision or 'main'!r}) is not in the local Hub cache "
            f"{where!r} and {why}; download it once with network access, or give cache_dir= where "
            f"it is cached, or a local folder"
        ) from None
    except EntryNotFoundError:
        raise LoadError(f"{what}: {repo} has no file {filename!r}") from None
    except RevisionNotFoundError:
        raise LoadError(f"{what}: Hub repo {repo_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise LoadError(
            f"{what}: {repo_id!r} is not a local folder and no Hub repo of that name was "
            f"found (or it is private: pass token=)"
        ) from None
    except (OSError, ValueError) as e:  # other Hub/HTTP failures
        if isinstance(e, LoadError):
            raise
        raise LoadError(f"{what}: could not fetch {subject}: {e}") from e


def _connection_types() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the network/Hub could not be reached" for the HTTP
    clients huggingface_hub may use (httpx in 1.x, its httpx2 fork, requests in 0.x)."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        types += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(types)


def connection_failure(exc: BaseException | None) -> BaseException | None:
    """The connection error behind ``exc`` (itself, or along its ``__cause__``/``__context__``
    chain, where huggingface_hub keeps it), or ``None``. Offline mode is not a failure."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    types = _connection_types()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OfflineModeIsEnabled):  # a ConnectionError, but asked for
            return None
        if isinstance(exc, types):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def unreachable(what: str, subject: str, cause: BaseException) -> LoadError:
    """The LoadError for a Hub that could not be reached (no network, DNS, proxy, timeout)."""
    return LoadError(
        f"{what}: could not reach the Hugging Face Hub for {subject} ({type(cause).__name__}: "
        f"{cause}); check the network connection (and HF_ENDPOINT / proxy settings), or, if the "
        f"files are already cached, pass local_files_only=True or set HF_HUB_OFFLINE=1, or give "
        f"a local folder"
    )


def resolve_folder(path_or_repo_id: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                   local_files_only: bool = False, token: str | bool | None = None,
                   allow_patterns: str | list[str] | None = None, what: str = "from_pretrained",
                   holds: str | None = None) -> Path:
    """A local folder, or the snapshot folder of a Hub repo (downloaded, or from the cache).

    ``allow_patterns``: the files to fetch from the Hub (default: an intervention save's three
    files); ``what``: the caller's name, for messages; ``holds``: what the folder should hold,
    for the message when a file is given instead."""
    path = Path(os.fspath(path_or_repo_id)).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        holds = holds or f"{CONFIG_NAME} and {WEIGHTS_NAME}"
        raise LoadError(f"{what}: {str(path)!r} is a file; give the folder that holds {holds}, or a Hub repo id")
    from huggingface_hub import snapshot_download

    repo_id = str(path_or_repo_id)
    with _hub_errors(what, repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only):
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            token=token, allow_patterns=allow_patterns or [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            library_name=LIBRARY, library_version=__version__,
        )
    return Path(folder)


def resolve_file(repo_id: str, filename: str, *, subfolder: str | None = None, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                 token: str | bool | None = None, required: bool = True,
                 what: str = "load_sae") -> Path | None:
    """One file of a Hub repo, downloaded or from the cache (``hf_hub_download``).

    With ``required=False`` a file the repo (or the offline cache) does not have gives ``None``
    instead of a LoadError. Local folders are the caller's business: this is the Hub half."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    with _hub_errors(what, repo_id, revision=revision, cache_dir=cache_dir,
                     local_files_only=local_files_only, filename=filename, subfolder=subfolder):
        try:
            _reachable_or_cached(repo_id, filename, subfolder=subfolder, revision=revision,
                                 cache_dir=cache_dir, local_files_only=local_files_only, token=token)
            return Path(hf_hub_download(
                repo_id, filename, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                local_files_only=local_files_only, token=token,
                library_name=LIBRARY, library_version=__version__,
            ))
        except EntryNotFoundError as e:  # LocalEntryNotFoundError included: not cached while offline
            # A file that could not be looked up because the Hub is unreachable is not an
            # absent file: stop here (the caller would otherwise try file after file).
            if required or (not local_files_only and connection_failure(e) is not None):
                raise
            return None


def _reachable_or_cached(repo_id, filename, *, subfolder, revision, cache_dir, local_files_only, token):
    """Fail fast when the Hub cannot be reached and the file is not cached.

    ``hf_hub_download`` retries an unreachable Hub with back-off (about 25 s a file) before it
    says so; its metadata call ``get_hf_file_metadata`` does not retry. So, online and with no
    cached copy (a cached one is used when the Hub is down), one metadata request goes first: a
    connection error comes back at once (translated by :func:`_hub_errors`), and a file the
    repo does not have is an ``EntryNotFoundError`` as from the download."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if local_files_only or constants.is_offline_mode():
        return
    in_repo = f"{subfolder}/{filename}" if subfolder else filename
    if isinstance(try_to_load_from_cache(repo_id, in_repo, cache_dir=cache_dir, revision=revision), str):
        return
    get_hf_file_metadata(hf_hub_url(repo_id, filename, subfolder=subfolder, revision=revision),
                         token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT)


# -- the model card ----------------------------------------------------------------------------
def model_card(doc: dict, repo_id: str | None = None) -> ModelCard:
    """A :class:`huggingface_hub.ModelCard` describing a saved document."""
    from huggingface_hub import ModelCard, ModelCardData

    base = doc["base_model"]
    reps = doc["intervenable_config"]["representations"]
    types = sorted({r["intervention_type"] for r in reps})
    hub_base = hub_model_id(base.get("name_or_path"))
    data = ModelCardData(
        library_name=LIBRARY,
        tags=[LIBRARY, "interventions", "interpretability", *types],
        base_model=hub_base,
    )
    rows = "\n".join(
        f"| {i} | {r['layer']} | `{r['component']}` | `{r['unit']}` | `{r['intervention_type']}` |"
        for i, r in enumerate(reps)
    )
    shown_base = base.get("name_or_path") or base.get("class")
    where = repo_id or "path/to/this/folder"
    if hub_base and base.get("class"):
        load_model = (
            f"from transformers import {base['class']}\n\n"
            f"model = {base['class']}.from_pretrained({hub_base!r})"
        )
    else:
        load_model = "model = ...  # the base model these interventions were trained on"
    functions = [e["function"] for e in doc["interventions"] if "function" in e]
    fn_arg = ""
    fn_note = ""
    if functions:
        fn_arg = ", functions={" + ", ".join(f"{f!r}: ..." for f in functions) + "}"
        fn_note = (
            "\nSome interventions are plain Python functions, saved by name only: give them again "
            "with `functions=`.\n"
        )
    body = f"""
# pyvene_like interventions on {shown_base}

Interventions on the internals of `{shown_base}` (`model_type`: {base.get('model_type')}),
saved with pyvene_like {doc['library_version']} (mode
`{doc['intervenable_config']['mode']}`).

| # | layer | component | unit | intervention |
|---|---:|---|---|---|
{rows}

## Use

```python
import pyvene_like as pv
{load_model}
im = pv.IntervenableModel.from_pretrained({where!r}, model=model{fn_arg})
```
{fn_note}
## Files

* `config.json`: the intervention config, the library version and the base model's identity
  (config hash `{base.get('config_hash')}`; loading onto another model warns).
* `interventions.safetensors`: every tensor (parameters, buffers, source representations).
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


# -- sharing -------------------------------------------------------------------------------------
def push_to_hub(im: nn.Module, repo_id: str, *, private: bool | None = None, token: str | bool | None = None,
                revision: str | None = None, commit_message: str | None = None, create_pr: bool = False,
                api: HfApi | None = None) -> CommitInfo:
    """Save into a temporary folder and upload it to the Hub repo ``repo_id`` (created if needed).

    ``api`` is a :class:`huggingface_hub.HfApi` (one is made with ``token`` when not given).
    Returns what ``upload_folder`` returns (a ``CommitInfo``).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with _push_errors(repo_id):
        return _push(im, api, repo_id, private=private, token=token, revision=revision,
                     commit_message=commit_message, create_pr=create_pr)


@contextlib.contextmanager
def _push_errors(repo_id):
    """No network while pushing: a LoadError saying the Hub could not be reached (the save itself
    needs none, so the folder can be written with save_pretrained and uploaded later)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - only connection failures are translated
        conn = connection_failure(e)
        if conn is None:
            raise
        raise LoadError(
            f"push_to_hub: could not reach the Hugging Face Hub to push to {repo_id!r} "
            f"({type(conn).__name__}: {conn}); check the network connection (and HF_ENDPOINT / "
            f"proxy settings), or write the folder with save_pretrained(...) and upload it later"
        ) from None


def _push(im, api, repo_id, *, private, token, revision, commit_message, create_pr):
    url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyvene_like-") as tmp:
        save_pretrained(im, tmp, repo_id=repo_id)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            repo_type="model",
            revision=revision,
            token=token,
            create_pr=create_pr,
            commit_message=commit_message or f"Upload pyvene_like {__version__} interventions",
        )
