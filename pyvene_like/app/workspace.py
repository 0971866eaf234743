"""What the browser app serves: the folders it was given, what they hold, and the computations
behind each page, as plain JSON-ready values (no web framework here, so every page's data is
testable without a server).

Every path a request names is *relative to one of the roots* given on the command line, written
``"<root label>/<path inside it>"``; :meth:`Workspace.resolve` refuses absolute paths, ``..``,
backslashes and anything (a symlink included) that resolves outside its root.
"""

from __future__ import annotations

import copy
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch

from ..errors import ConfigError, LoadError, PyveneLikeError
from ..validation import is_int

#: How each kind of saved folder is recognised (the files its writer puts there).
KINDS = ("model", "codebooks", "records", "sae", "patching", "interventions", "prompts")
_MAX_NEW_TOKENS = 64
_MAX_TEXT = 4000
_SCAN_DEPTH = 4


class PathRefused(ConfigError):
    """A request named a path outside the folders the app was given."""


def _label_for(root: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", root.name) or "root"
    label, n = base, 2
    while label in taken:
        label, n = f"{base}-{n}", n + 1
    return label


def folder_kind(path: Path) -> str | None:
    """Which of :data:`KINDS` the folder (or ``.txt`` file) ``path`` is, from its files; ``None``
    when it is none of them."""
    from ..codebook.saving import CODEBOOK_CONFIG
    from ..serialization import CONFIG_NAME, WEIGHTS_NAME, is_library_json

    if path.is_file():
        return "prompts" if path.suffix == ".txt" else None
    if not path.is_dir():
        return None
    if (path / CODEBOOK_CONFIG).is_file():
        return "codebooks"
    if (path / "fires.safetensors").is_file() and (path / "codes").is_dir():
        return "records"
    if (path / "patching.json").is_file():
        return "patching"
    if (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
        return "sae"
    if (path / CONFIG_NAME).is_file():
        if (path / WEIGHTS_NAME).is_file() and is_library_json(path / CONFIG_NAME):
            return "interventions"
        if not is_library_json(path / CONFIG_NAME):
            return "model"
    return None


def _check_text(value: object, field: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ConfigError(f"{field} must be non-empty text, got {value!r}")
    if len(value) > _MAX_TEXT:
        raise ConfigError(f"{field} is {len(value)} characters long; accepted: at most {_MAX_TEXT}")
    return value


def _check_int(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{field} must be an int in {lo}..{hi}, got {value!r}")
    return value


def _split_context(context: str) -> dict:
    """``"a b [[c]] d"`` (record_codes' contexts) -> ``{"left", "token", "right"}``."""
    left, sep, rest = context.partition("[[")
    token, sep2, right = rest.rpartition("]]")
    if not sep or not sep2:
        return {"left": context, "token": "", "right": ""}
    return {"left": left, "token": token, "right": right}


class Workspace:
    """The folders the app may read (``roots``) and the model the pages run on.

    ``model``: a folder written by ``save_pretrained`` (a causal LM and, ideally, its tokenizer);
    when ``None``, the one model folder found under the roots is used (pages that run a model
    say so when there is none). ``tokenizer``: a folder to load the tokenizer from when it is
    not saved with the model.
    """

    def __init__(self, roots: Sequence[str | os.PathLike], model: str | os.PathLike | None = None,
                 tokenizer: str | os.PathLike | None = None):
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        if not roots:
            raise ConfigError("serve: give at least one folder to serve")
        self.roots: dict[str, Path] = {}
        for r in roots:
            p = Path(r).expanduser()
            if not p.is_dir():
                raise LoadError(f"serve: {str(r)!r} is not a folder; give folders holding saved codebooks, "
                                f"code records, SAEs, patching results or interventions")
            self.roots[_label_for(p, set(self.roots))] = p.resolve()
        self._model_path = None if model is None else Path(model).expanduser()
        self._tokenizer_path = None if tokenizer is None else Path(tokenizer).expanduser()
        for name, p in (("--model", self._model_path), ("--tokenizer", self._tokenizer_path)):
            if p is not None and not p.is_dir():
                raise LoadError(f"serve: {name} {str(p)!r} is not a folder; give a folder written by save_pretrained")
        self._lock = threading.RLock()  # one model, one computation at a time
        self._cache: dict = {}

    # -- paths ----------------------------------------------------------------------------------
    def resolve(self, rel: object, kind: str | None = None) -> Path:
        """``"<root label>/<path>"`` -> the real path under that root, or :class:`PathRefused`.
        ``kind`` (one of :data:`KINDS`): the folder must also be of that kind."""
        if not isinstance(rel, str) or not rel.strip():
            raise PathRefused(f"path must be '<folder label>/<path inside it>', got {rel!r}")
        if "\\" in rel or "\x00" in rel or rel.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", rel):
            raise PathRefused(f"path {rel!r} is refused: give it relative to a served folder, "
                              f"as '<folder label>/<path inside it>' (labels: {sorted(self.roots)})")
        parts = PurePosixPath(rel).parts
        if any(p == ".." for p in parts):
            raise PathRefused(f"path {rel!r} is refused: '..' may not appear in it")
        label, rest = parts[0], parts[1:]
        if label not in self.roots:
            raise PathRefused(f"path {rel!r} names no served folder: {label!r} is not one of {sorted(self.roots)}")
        root = self.roots[label]
        path = root.joinpath(*rest).resolve()
        if not path.is_relative_to(root):
            raise PathRefused(f"path {rel!r} is refused: it leads outside the served folder {label!r}")
        if not path.exists():
            raise LoadError(f"path {rel!r} does not exist in the served folder {label!r}")
        if kind is not None and folder_kind(path) != kind:
            raise LoadError(f"path {rel!r} is not a saved {kind} folder (it looks like: "
                            f"{folder_kind(path) or 'nothing the app reads'})")
        return path

    def scan(self) -> dict[str, list[str]]:
        """Every folder of a known kind under the roots (a few levels deep), by kind, as paths
        :meth:`resolve` accepts. Symlinks are not followed."""
        out: dict[str, list[str]] = {k: [] for k in KINDS}
        for label, root in self.roots.items():
            stack = [(root, 0)]
            while stack:
                folder, depth = stack.pop()
                kind = folder_kind(folder)
                if kind is not None:
                    rel = folder.relative_to(root).as_posix()
                    out[kind].append(label if rel == "." else f"{label}/{rel}")
                    continue
                if depth >= _SCAN_DEPTH:
                    continue
                try:
                    children = sorted(folder.iterdir())
                except OSError:
                    continue
                for child in children:
                    if child.is_symlink() or child.name.startswith("."):
                        continue
                    if child.is_dir():
                        stack.append((child, depth + 1))
                    elif folder_kind(child) == "prompts":
                        out["prompts"].append(f"{label}/{child.relative_to(root).as_posix()}")
        for k in out:
            out[k].sort()
        return out

    def _cached(self, key, make):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    # -- the model --------------------------------------------------------------------------------
    def model_folder(self) -> Path:
        if self._model_path is not None:
            return self._model_path
        found = self.scan()["model"]
        if len(found) != 1:
            raise ConfigError(
                "this page runs a model: start the app with --model FOLDER (a causal LM saved with "
                f"save_pretrained); the served folders hold {len(found)} model folders"
                + (f" ({', '.join(found)})" if found else "")
            )
        return self.resolve(found[0])

    def base_model(self):
        """The causal LM and its tokenizer, loaded once."""
        def load():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder = self.model_folder()
            try:
                model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
            except Exception as e:  # noqa: BLE001 - transformers raises many kinds
                raise LoadError(f"cannot load a causal LM from {str(folder)!r}: {type(e).__name__}: "
                                f"{(str(e).strip().splitlines() or [''])[0]}") from None
            tok_folder = self._tokenizer_path or folder
            try:
                tok = AutoTokenizer.from_pretrained(str(tok_folder))
            except Exception as e:  # noqa: BLE001
                raise LoadError(f"cannot load a tokenizer from {str(tok_folder)!r} ({type(e).__name__}); save "
                                f"one with the model (tokenizer.save_pretrained) or give --tokenizer") from None
            return model, tok
        return self._cached(("model",), load)

    def _encode(self, tok, text: str) -> torch.Tensor:
        ids = tok(text, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            raise ConfigError(f"text {text!r} gives no tokens")
        return ids

    def _generate(self, model, tok, prompt: str, max_new_tokens: int, im=None) -> str:
        """Greedy continuation of ``prompt`` (plain or through the IntervenableModel ``im``)."""
        ids = self._encode(tok, prompt)
        base = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        with torch.no_grad():
            seq = model.generate(**base, **kwargs) if im is None else im.generate(base, timesteps="all", **kwargs)[1]
        return tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True)

    # -- codes ------------------------------------------------------------------------------------
    def records(self, rel: str):
        from ..codebook import CodeRecords

        path = self.resolve(rel, "records")
        return self._cached(("records", path), lambda: CodeRecords.load_from_disk(path))

    def codebooks(self, rel: str) -> list[dict]:
        """The codebooks a records folder covers: site name, layer, component, heads, codes."""
        recs = self.records(rel)
        meta = self._cached(("code_meta", self.resolve(rel, "records")), lambda: recs.codes.select_columns(
            ["codebook", "layer", "component", "head", "code"]).to_dict())
        books: dict[str, dict] = {}
        for name, layer, comp, head, code in zip(meta["codebook"], meta["layer"], meta["component"],
                                                 meta["head"], meta["code"]):
            b = books.setdefault(name, {"name": name, "layer": layer, "component": comp, "heads": set(),
                                        "num_codes": 0})
            if head is not None:
                b["heads"].add(head)
            b["num_codes"] = max(b["num_codes"], code + 1)
        return [dict(b, heads=sorted(b["heads"])) for b in books.values()]

    def code_list(self, rel: str, codebook: str, head: int | None, *, sort: str = "count",
                  limit: int = 200) -> list[dict]:
        """The codes of one codebook (and head), most used first (``sort="count"``) or by index."""
        if sort not in ("count", "code"):
            raise ConfigError(f"sort {sort!r} is not accepted; accepted: 'count', 'code'")
        recs = self.records(rel)
        # Read once per records folder: a real model's table has a row per code per head.
        table = self._cached(("code_table", self.resolve(rel, "records")), lambda: recs.codes.select_columns(
            ["codebook", "head", "code", "count", "frequency", "top_tokens"]).to_dict())
        names = sorted(set(table["codebook"]))
        if not isinstance(codebook, str) or codebook not in names:
            raise ConfigError(f"codebook {codebook!r} is not in {rel!r}; accepted: {names}")
        heads = sorted({h for c, h in zip(table["codebook"], table["head"]) if c == codebook})
        if head is not None and (not is_int(head) or head not in heads):
            raise ConfigError(f"head must be one of the codebook's heads {heads} (or None for all), got {head!r}")
        limit = _check_int(limit, "limit", 1, 10**6)
        rows = [
            {"row": i, "code": table["code"][i], "head": table["head"][i], "count": table["count"][i],
             "frequency": table["frequency"][i], "top_tokens": table["top_tokens"][i][:5]}
            for i in range(len(table["code"]))
            if table["codebook"][i] == codebook and (head is None or table["head"][i] == head)
        ]
        rows.sort(key=(lambda r: -r["count"]) if sort == "count" else (lambda r: r["code"]))
        return rows[:limit]

    def code_detail(self, rel: str, row: int) -> dict:
        recs = self.records(rel)
        row = _check_int(row, "row", 0, len(recs.codes) - 1)
        r = recs.codes[row]
        return {"row": row, "codebook": r["codebook"], "layer": r["layer"], "component": r["component"],
                "head": r["head"], "code": r["code"], "count": r["count"], "frequency": r["frequency"],
                "contexts": [dict(_split_context(c), score=s)
                             for c, s in zip(r["top_contexts"], r["top_scores"])]}

    def code_search(self, rel: str, pattern: str, *, top: int = 20, min_fires: int = 1,
                    sort_by: str = "f1") -> list[dict]:
        from ..codebook import code_search

        _check_text(pattern, "pattern")
        top = _check_int(top, "top", 1, 1000)
        min_fires = _check_int(min_fires, "min_fires", 1, 10**9)
        recs = self.records(rel)
        found = code_search(recs, pattern, top=top, min_fires=min_fires, sort_by=sort_by)
        return [{"code": m.info.code, "layer": m.info.layer, "head": m.info.head, "site": m.info.site,
                 "line": str(m.info), "precision": m.precision, "recall": m.recall, "f1": m.f1,
                 "fires": m.fires, "hits": m.hits} for m in found]

    def codebook_model(self, rel: str):
        """A copy of the base model with the codebooks of ``rel`` loaded into it."""
        from ..codebook import load_codebooks

        path = self.resolve(rel, "codebooks")

        def load():
            base, tok = self.base_model()
            model = copy.deepcopy(base)
            load_codebooks(model, path)
            return model.eval(), tok
        return self._cached(("codebook_model", path), load)

    def force_codes(self, rel: str, prompt: str, codes: str, *, max_new_tokens: int = 20,
                    mode: str = "replace") -> dict:
        """Greedy text from ``prompt`` with and without the codes of ``codes`` (lines such as
        ``Code: 3, Layer: 1, Head: 0, Site: head_attention_value_output``) forced on."""
        from ..codebook import code_intervention_config, parse_code_infos
        from ..model import IntervenableModel

        _check_text(prompt, "prompt")
        _check_text(codes, "codes")
        max_new_tokens = _check_int(max_new_tokens, "max_new_tokens", 1, _MAX_NEW_TOKENS)
        infos = parse_code_infos(codes)
        if not infos:
            raise ConfigError("codes: give at least one line such as 'Code: 3, Layer: 1, Head: 0, Site: ...'")
        with self._lock:
            model, tok = self.codebook_model(rel)
            im = IntervenableModel(code_intervention_config(infos, mode=mode), model)
            return {"prompt": prompt, "codes": [str(i) for i in infos],
                    "unsteered": self._generate(model, tok, prompt, max_new_tokens),
                    "steered": self._generate(model, tok, prompt, max_new_tokens, im)}

    # -- SAE features -----------------------------------------------------------------------------
    def sae(self, rel: str):
        from ..sae import hook_to_site, load_sae

        path = self.resolve(rel, "sae")

        def load():
            sae = load_sae(path)
            if not sae.hook_name:
                raise LoadError(f"SAE {rel!r} names no hook (hook_name); the app cannot tell where it reads")
            layer, component = hook_to_site(sae.hook_name)
            return sae, layer, component
        return self._cached(("sae", path), load)

    def prompts(self, rel: str) -> list[str]:
        path = self.resolve(rel, "prompts")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            raise LoadError(f"prompt file {rel!r} holds no prompts (one prompt per line)")
        return lines

    def _features(self, sae_rel: str, prompts_rel: str):
        """Per prompt: its token strings and ``[n_tokens, d_sae]`` feature activations."""
        from ..sae import prompt_activations

        def compute():
            sae, layer, component = self.sae(sae_rel)
            model, tok = self.base_model()
            prompts = self.prompts(prompts_rel)
            acts = prompt_activations(model, prompts, layer, component, tokenizer=tok)
            p = next(sae.parameters())
            with torch.no_grad():
                feats = [sae.encode(a.to(p.device, p.dtype)).float().cpu() for a in acts]
            ids = [tok(t)["input_ids"] for t in prompts]
            tokens = [[tok.decode([i]) for i in row] for row in ids]
            return acts, feats, tokens
        return self._cached(("features", self.resolve(sae_rel), self.resolve(prompts_rel)), compute)

    def sae_summary(self, sae_rel: str, prompts_rel: str, *, limit: int = 100) -> dict:
        """The features that fire most on a prompt set, with coverage (fraction of features
        firing at least once) and the SAE's site."""
        from ..sae import coverage

        sae, layer, component = self.sae(sae_rel)
        limit = _check_int(limit, "limit", 1, 10**6)
        acts, feats, _ = self._features(sae_rel, prompts_rel)
        allf = torch.cat(feats)  # [tokens, d_sae]
        peak, fires = allf.max(0).values, (allf > 0).sum(0)
        order = peak.argsort(descending=True)[:limit].tolist()
        return {"d_sae": sae.d_sae, "d_in": sae.d_in, "layer": layer, "component": component,
                "hook_name": sae.hook_name, "prompts": len(feats), "tokens": int(allf.shape[0]),
                "coverage": coverage(sae, acts),
                "features": [{"feature": f, "max": float(peak[f]), "fires": int(fires[f])}
                             for f in order if peak[f] > 0]}

    def sae_feature(self, sae_rel: str, prompts_rel: str, feature: int, *, top: int = 10) -> dict:
        """One feature's top-activating tokens, each with its prompt's tokens and activations."""
        sae, _, _ = self.sae(sae_rel)
        feature = _check_int(feature, "feature", 0, sae.d_sae - 1)
        top = _check_int(top, "top", 1, 1000)
        _, feats, tokens = self._features(sae_rel, prompts_rel)
        best = []
        for i, f in enumerate(feats):
            col = f[:, feature]
            for pos in col.nonzero().flatten().tolist():
                best.append((float(col[pos]), i, pos))
        best.sort(key=lambda t: -t[0])
        out = []
        for value, i, pos in best[:top]:
            toks = tokens[i]
            # The collector keeps every token; when a tokenizer adds tokens the counts agree.
            vals = feats[i][:, feature].tolist()
            out.append({"prompt": i, "position": pos, "value": value, "tokens": toks[:len(vals)],
                        "values": vals[:len(toks)]})
        return {"feature": feature, "contexts": out}

    def sae_scores(self, sae_rel: str, align_rel: str, ref_rel: str, *, top_k: int = 10) -> dict:
        """Features scored between an alignment (target) and a reference prompt set
        (:func:`~pyvene_like.sae.score_features`, method ``"difference"``)."""
        from ..sae import score_features

        sae, _, _ = self.sae(sae_rel)
        top_k = _check_int(top_k, "top_k", 1, sae.d_sae)
        align, _, _ = self._features(sae_rel, align_rel)
        ref, _, _ = self._features(sae_rel, ref_rel)
        scores = score_features(sae, align, ref)
        return scores.to_dict(top_k=top_k)

    def sae_steer(self, sae_rel: str, prompt: str, features: Sequence[int], *, value: float = 4.0,
                  max_new_tokens: int = 20) -> dict:
        """Greedy text from ``prompt`` with and without the chosen features added (``sae_steer``,
        mode ``"add"``: each feature's activation raised by ``value`` at every position)."""
        from ..config import RepresentationConfig
        from ..model import IntervenableModel

        _check_text(prompt, "prompt")
        sae, layer, component = self.sae(sae_rel)
        if not isinstance(features, (list, tuple)) or not features:
            raise ConfigError(f"features must be a non-empty list of feature ids, got {features!r}")
        feats = [_check_int(f, "features[]", 0, sae.d_sae - 1) for f in features]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1e4 <= value <= 1e4:
            raise ConfigError(f"value must be a number in -1e4..1e4, got {value!r}")
        max_new_tokens = _check_int(max_new_tokens, "max_new_tokens", 1, _MAX_NEW_TOKENS)
        with self._lock:
            model, tok = self.base_model()
            rep = RepresentationConfig(layer, component, intervention_type="sae_steer",
                                       intervention_kwargs={"sae": sae, "features": feats, "mode": "add",
                                                            "value": float(value)})
            im = IntervenableModel(rep, model)
            return {"prompt": prompt, "features": feats, "value": float(value),
                    "unsteered": self._generate(model, tok, prompt, max_new_tokens),
                    "steered": self._generate(model, tok, prompt, max_new_tokens, im)}

    # -- patching results -------------------------------------------------------------------------
    def patching(self, rel: str) -> dict:
        """A saved :class:`~pyvene_like.analysis.PatchingResult` as JSON: effect and normalised
        effect over its grid, with the axis labels and the prompt's tokens."""
        from ..analysis import PatchingResult

        path = self.resolve(rel, "patching")
        res = self._cached(("patching", path), lambda: PatchingResult.load(path))
        return {"axes": list(res.axes), "labels": res.labels, "tokens": res.tokens,
                "effect": res.effect.tolist(), "normalized": res.normalized.tolist(),
                "clean": float(res.clean.mean()), "corrupted": float(res.corrupted.mean()),
                "direction": res.direction, "component": res.component, "method": res.method}

    # -- saved interventions ------------------------------------------------------------------------
    def run_intervention(self, rel: str, text: str, *, source: str = "", top_k: int = 10) -> dict:
        """The next-token distribution after ``text``, original and with the saved interventions
        of ``rel`` (at the last position; fed by ``source``'s last position when given, else
        applied without a source)."""
        from ..model import IntervenableModel

        _check_text(text, "text")
        _check_text(source, "source", allow_empty=True)
        top_k = _check_int(top_k, "top_k", 1, 50)
        path = self.resolve(rel, "interventions")
        with self._lock:
            model, tok = self.base_model()
            im = self._cached(("interventions", path), lambda: IntervenableModel.from_pretrained(path, model))
            ids = self._encode(tok, text)
            base = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            last = ids.shape[1] - 1
            with torch.no_grad():
                if source.strip():
                    sids = self._encode(tok, source)
                    src = {"input_ids": sids, "attention_mask": torch.ones_like(sids)}
                    original, intervened = im(base, [src], {"sources->base": (sids.shape[1] - 1, last)},
                                              output_original_output=True)
                else:
                    original, intervened = im(base, unit_locations={"base": last}, output_original_output=True)

            def dist(out):
                logits = out.logits if hasattr(out, "logits") else out[0]
                p = logits[0, -1].float().softmax(-1)
                v, i = p.topk(min(top_k, p.numel()))
                return p, [{"token": tok.decode([t]), "id": t, "prob": float(x)} for x, t in zip(v.tolist(), i.tolist())]

            p0, top0 = dist(original)
            p1, top1 = dist(intervened)
            kl = float((p0 * (p0.clamp_min(1e-30).log() - p1.clamp_min(1e-30).log())).sum())
            return {"text": text, "source": source, "original": top0, "intervened": top1, "kl": kl,
                    "interventions": [type(s.intervention).__name__ for s in im.plan.slots]}


def error_payload(e: Exception) -> tuple[int, dict]:
    """(HTTP status, JSON body) for an exception raised while answering a request."""
    if isinstance(e, PathRefused):
        return 403, {"error": str(e)}
    if isinstance(e, PyveneLikeError):
        return 400, {"error": str(e)}
    return 500, {"error": f"{type(e).__name__}: {e}"}
