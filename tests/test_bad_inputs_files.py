"""Bad files, generated: a saved intervention folder with config.json sub-trees replaced and
the weights file altered, and SAE files in each format with their settings or arrays broken.

Every load either succeeds (and then runs like any loaded model) or raises a library error
(``LoadError`` / ``PyveneLikeError``); never a raw ``TypeError``/``AttributeError``/... And the
base model is left exactly as it was: no hooks, same parameters, ``requires_grad`` and
training flags. The default (``ci``) profile keeps this quick; ``HYPOTHESIS_PROFILE=long`` digs.
"""

from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from conftest import make_gpt2  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import pyvene_like as pv  # noqa: E402
from pyvene_like.errors import LoadError, PyveneLikeError  # noqa: E402
from pyvene_like.sae import SAE, load_sae  # noqa: E402

_SETTINGS = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                     deadline=None)


# -- the model's state, to compare before and after a load ----------------------------------------
def fingerprint(model: torch.nn.Module):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules())
    params = [(n, p.dtype, tuple(p.shape), p.requires_grad, p.detach().clone())
              for n, p in model.named_parameters()]
    flags = [m.training for m in model.modules()]
    return hooks, params, flags


def assert_same(model, before):
    hooks, params, flags = fingerprint(model)
    assert hooks == before[0], "hooks were left on the model"
    assert flags == before[2], "training flags changed"
    assert len(params) == len(before[1])
    for (n, dt, sh, rg, t), (n2, dt2, sh2, rg2, t2) in zip(params, before[1]):
        assert (n, dt, sh, rg) == (n2, dt2, sh2, rg2), n
        assert torch.equal(t, t2), n


# -- a saved folder ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return make_gpt2(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16)


@pytest.fixture(scope="module")
def saved(small, tmp_path_factory):
    torch.manual_seed(0)
    reps = [
        pv.RepresentationConfig(0, "block_output", intervention_type="rotated_space"),
        pv.RepresentationConfig(1, "mlp_output", intervention_type="addition",
                                source_representation=torch.randn(16)),
        pv.RepresentationConfig(1, "block_output", intervention_type="noise",
                                intervention_kwargs={"noise_level": 0.5, "seed": 3}),
        pv.RepresentationConfig(0, "attention_output", intervention_type="low_rank_rotated_space",
                                low_rank_dimension=4, subspace_partition=[[0, 2], [2, 4]]),
        pv.RepresentationConfig(0, "mlp_output", intervention_type="sae_steer",
                                intervention_kwargs={"sae_config": SAE(16, 32, "jumprelu").config(),
                                                     "features": [3, 4], "mode": "set", "value": [2.0, -1.0]}),
    ]
    im = pv.IntervenableModel(pv.IntervenableConfig(reps), small)
    folder = tmp_path_factory.mktemp("saved")
    im.save_pretrained(folder)
    base = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    return Saved((folder, base, _run(im, base), small))


class Saved(tuple):
    """(folder, base ids, reference logits) with a short repr for hypothesis' reports."""

    def __repr__(self):
        return f"Saved({self[0]})"


def _run(im, base):
    n_src = sum(1 for iv in im.interventions if getattr(iv, "needs_source", False))
    out = im(base, sources=[base] if n_src else None,
             unit_locations={"sources->base": 1} if n_src else {"base": 1})
    return out[1].logits if isinstance(out, tuple) else out.logits


def _load(folder, model):
    before = fingerprint(model)
    try:
        with warnings.catch_warnings():  # newer-version / other-base-model warnings are fine here
            warnings.simplefilter("ignore", pv.PyveneLikeWarning)
            im = pv.IntervenableModel.from_pretrained(folder, model)
    except PyveneLikeError as e:
        assert_same(model, before)
        return e
    return im


# JSON values that replace a sub-tree of config.json.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def _paths(doc, prefix=()):
    """Every path into the JSON tree (dict keys and list indices)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _replace(doc, path, value):
    if not path:
        return value
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc


def _copy(folder, tmp):
    dst = Path(tmp)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(folder, dst)
    return dst


@_SETTINGS
@given(data=st.data())
def test_mutated_config_json_loads_or_raises_a_library_error(saved, tmp_path, data):
    folder, base, _, small = saved
    doc = json.loads((folder / "config.json").read_text())
    paths = [p for p in _paths(doc) if p[:1] != ("library",)]
    path = data.draw(st.sampled_from(paths), label="path")
    value = data.draw(json_values, label="value")
    dst = _copy(folder, tmp_path / "mut")
    (dst / "config.json").write_text(json.dumps(_replace(doc, path, value)))
    before = fingerprint(small)
    result = _load(dst, small)
    if isinstance(result, PyveneLikeError):
        return
    try:  # it loaded: it runs (or refuses the call with a library error) and unhooks after
        _run(result, base)
    except PyveneLikeError:
        pass
    assert_same(small, before)


def _rewrite_weights(dst, change):
    """Apply ``change(dict) -> dict`` to the weights and record the new file's sha256, as a
    user editing the file by hand would (so the checks past the digest are reached)."""
    from safetensors.torch import load_file, save_file

    from pyvene_like.serialization import sha256_file

    w = load_file(str(dst / "interventions.safetensors"))
    save_file(change(w), str(dst / "interventions.safetensors"), metadata={"format": "pt"})
    doc = json.loads((dst / "config.json").read_text())
    doc["weights"]["sha256"] = sha256_file(dst / "interventions.safetensors")
    (dst / "config.json").write_text(json.dumps(doc))


_DTYPES = [torch.int64, torch.int32, torch.bool, torch.uint8, torch.complex64, torch.float16,
           torch.float64, torch.bfloat16]


@_SETTINGS
@given(data=st.data())
def test_mutated_weights_load_bit_identically_or_raise(saved, tmp_path, data):
    folder, base, reference, small = saved
    from safetensors.torch import load_file

    keys = sorted(load_file(str(folder / "interventions.safetensors")))
    key = data.draw(st.sampled_from(keys), label="key")
    kind = data.draw(st.sampled_from(["dtype", "shape", "drop", "truncate", "bytes"]), label="kind")
    dst = _copy(folder, tmp_path / "mut")
    fp = dst / "interventions.safetensors"
    if kind == "dtype":
        dtype = data.draw(st.sampled_from(_DTYPES), label="dtype")
        _rewrite_weights(dst, lambda w: {**w, key: w[key].to(dtype)})
    elif kind == "shape":
        extra = data.draw(st.integers(1, 3), label="extra")
        _rewrite_weights(dst, lambda w: {**w, key: torch.zeros(*w[key].shape[:-1], w[key].shape[-1] + extra)
                                         if w[key].dim() else torch.zeros(extra)})
    elif kind == "drop":
        _rewrite_weights(dst, lambda w: {k: v for k, v in w.items() if k != key})
    elif kind == "truncate":
        raw = fp.read_bytes()
        fp.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")])
    else:
        raw = bytearray(fp.read_bytes())
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[at] ^= data.draw(st.integers(1, 255), label="xor")
        fp.write_bytes(bytes(raw))
    before = fingerprint(small)
    result = _load(dst, small)
    if isinstance(result, PyveneLikeError):
        assert isinstance(result, LoadError), result
        return
    # Loaded: only a lossless change (a wider float dtype) may get here, and then bit-identically.
    assert kind == "dtype", f"{kind} of {key} was accepted"
    assert key.startswith("source_representation."), f"{key} as {dtype} was cast silently"
    original = load_file(str(folder / "interventions.safetensors"))[key]
    if torch.equal(original.to(dtype).to(original.dtype), original):  # the file holds the same values
        assert torch.equal(_run(result, base), reference), f"{key} as {dtype} changed the outputs"
    else:
        _run(result, base)
    assert_same(small, before)


def test_integer_weights_are_refused_with_the_file_the_key_and_what_is_accepted(saved, small, tmp_path):
    folder, _, _, _ = saved
    dst = _copy(folder, tmp_path / "int")
    key = "intervention.0.rotate_layer.parametrizations.weight.original"
    _rewrite_weights(dst, lambda w: {**w, key: w[key].to(torch.int64)})
    before = fingerprint(small)
    with pytest.raises(LoadError, match=r"interventions.safetensors: tensor 'intervention.0.rotate_layer"
                                         r".*has dtype torch.int64; accepted: floating-point"):
        pv.IntervenableModel.from_pretrained(dst, small)
    assert_same(small, before)


@pytest.mark.parametrize("where, value, match", [
    (("intervenable_config",), [], r"field 'intervenable_config' must be a dict"),
    (("interventions", 0), [1, 2], r"field 'interventions\[0\]' must be a dict"),
    (("intervenable_config", "representations", 0, "layer"), True, r"layer must be a non-negative int, got True"),
    (("intervenable_config", "representations", 0, "group_key"), [1], r"group_key must be hashable"),
    (("intervenable_config", "representations", 2, "intervention_kwargs", "noise_level"), "loud",
     r"noise_level must be a non-negative finite number, got 'loud'"),
    (("weights",), "x", r"field 'weights' must be a dict"),
])
def test_malformed_config_json_names_the_field(saved, small, tmp_path, where, value, match):
    folder, _, _, _ = saved
    doc = json.loads((folder / "config.json").read_text())
    dst = _copy(folder, tmp_path / "bad")
    (dst / "config.json").write_text(json.dumps(_replace(doc, where, value)))
    before = fingerprint(small)
    with pytest.raises(LoadError, match=match):
        pv.IntervenableModel.from_pretrained(dst, small)
    assert_same(small, before)


# -- SAE files ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sae_folders(tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("saes")
    torch.manual_seed(0)
    d_in, d_sae = 8, 16
    w = {"W_enc": torch.randn(d_in, d_sae), "W_dec": torch.randn(d_sae, d_in),
         "b_enc": torch.randn(d_sae), "b_dec": torch.randn(d_in)}
    lens = root / "saelens"
    lens.mkdir()
    save_file(w, str(lens / "sae_weights.safetensors"))
    (lens / "cfg.json").write_text(json.dumps({
        "d_in": d_in, "d_sae": d_sae, "architecture": "standard", "activation_fn_str": "relu",
        "apply_b_dec_to_input": True, "hook_name": "blocks.0.hook_resid_post", "dtype": "float32"}))
    gemma = root / "gemma"
    gemma.mkdir()
    np.savez(gemma / "params.npz", W_enc=w["W_enc"].numpy(), W_dec=w["W_dec"].numpy(),
             b_enc=w["b_enc"].numpy(), b_dec=w["b_dec"].numpy(), threshold=np.abs(w["b_enc"].numpy()))
    openai = root / "openai"
    openai.mkdir()
    torch.save({"encoder.weight": w["W_enc"].T.clone(), "encoder.bias": w["b_enc"],
                "decoder.weight": w["W_dec"].T.clone(), "pre_bias": w["b_dec"],
                "latent_bias": torch.zeros(d_sae), "activation": "ReLU"}, openai / "sae.pt")
    return Folders({"saelens": lens, "gemma": gemma, "openai": openai})


class Folders(dict):
    def __repr__(self):
        return "Folders(...)"


def _load_sae(folder):
    try:
        return load_sae(str(folder))
    except PyveneLikeError as e:
        return e


def test_the_sae_fixtures_load(sae_folders):
    for name, folder in sae_folders.items():
        got = _load_sae(folder / "sae.pt" if name == "openai" else folder)
        assert isinstance(got, SAE), (name, got)


@_SETTINGS
@given(data=st.data())
def test_mutated_saelens_cfg_loads_or_raises_load_error(sae_folders, tmp_path, data):
    src = sae_folders["saelens"]
    doc = json.loads((src / "cfg.json").read_text())
    path = data.draw(st.sampled_from(list(_paths(doc))), label="path")
    value = data.draw(json_values, label="value")
    dst = _copy(src, tmp_path / "lens")
    (dst / "cfg.json").write_text(json.dumps(_replace(doc, path, value)))
    got = _load_sae(dst)
    if isinstance(got, PyveneLikeError):
        assert isinstance(got, LoadError), got
        return
    assert isinstance(got, SAE)
    x = torch.randn(3, got.d_in)
    got.decode(got.encode(x))  # it works


@_SETTINGS
@given(data=st.data())
def test_corrupted_gemma_scope_npz_raises_load_error(sae_folders, tmp_path, data):
    src = sae_folders["gemma"]
    dst = _copy(src, tmp_path / "gemma")
    fp = dst / "params.npz"
    kind = data.draw(st.sampled_from(["truncate", "bytes", "drop", "dtype", "shape"]), label="kind")
    if kind in ("truncate", "bytes"):
        raw = bytearray(fp.read_bytes())
        if kind == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
        else:
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] ^= data.draw(st.integers(1, 255), label="xor")
        fp.write_bytes(bytes(raw))
    else:
        arrays = dict(np.load(fp))
        key = data.draw(st.sampled_from(sorted(arrays)), label="key")
        if kind == "drop":
            del arrays[key]
        elif kind == "dtype":
            dt = data.draw(st.sampled_from([np.int64, np.bool_, np.complex64, np.float16, np.float64]), label="dt")
            arrays[key] = arrays[key].astype(dt)
        else:
            arrays[key] = np.zeros(arrays[key].shape[:-1] + (arrays[key].shape[-1] + 1,), np.float32)
        np.savez(fp, **arrays)
    got = _load_sae(dst)
    if isinstance(got, SAE):
        # Only a byte flip inside array data (same shapes, a float dtype) can load; it runs.
        assert kind in ("bytes", "dtype"), kind
        got.decode(got.encode(torch.randn(2, got.d_in)))
        return
    assert isinstance(got, LoadError), got


@_SETTINGS
@given(data=st.data())
def test_broken_openai_state_dict_raises_load_error(sae_folders, tmp_path, data):
    src = sae_folders["openai"]
    state = torch.load(src / "sae.pt", weights_only=True)
    key = data.draw(st.sampled_from(sorted(state)), label="key")
    kind = data.draw(st.sampled_from(["drop", "value", "dtype", "shape", "truncate"]), label="kind")
    dst = _copy(src, tmp_path / "openai")
    if kind == "truncate":
        raw = (dst / "sae.pt").read_bytes()
        (dst / "sae.pt").write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")])
    else:
        if kind == "drop":
            del state[key]
        elif kind == "value":
            state[key] = data.draw(st.sampled_from(["x", 3, None, [1, 2], {"a": 1}]), label="value")
        elif kind == "dtype":
            if isinstance(state[key], torch.Tensor):
                state[key] = state[key].to(data.draw(st.sampled_from([torch.int64, torch.bool, torch.complex64])))
        else:
            if isinstance(state[key], torch.Tensor):
                state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
        torch.save(state, dst / "sae.pt")
    got = _load_sae(dst / "sae.pt")
    if isinstance(got, SAE):
        got.decode(got.encode(torch.randn(2, got.d_in)))
        return
    assert isinstance(got, LoadError), got


def test_sae_hand_picked_files(sae_folders, tmp_path):
    lens = _copy(sae_folders["saelens"], tmp_path / "l1")
    doc = json.loads((lens / "cfg.json").read_text())
    (lens / "cfg.json").write_text(json.dumps({**doc, "apply_b_dec_to_input": "no"}))
    with pytest.raises(LoadError, match=r"apply_b_dec_to_input must be True or False, got 'no'"):
        load_sae(str(lens))
    (lens / "cfg.json").write_text(json.dumps([doc]))
    with pytest.raises(LoadError, match=r"cfg.json: expected a JSON object of SAE settings, got list"):
        load_sae(str(lens))
    gemma = _copy(sae_folders["gemma"], tmp_path / "g1")
    (gemma / "params.npz").write_bytes((gemma / "params.npz").read_bytes()[:100])
    with pytest.raises(LoadError, match=r"params.npz.*not a readable"):
        load_sae(str(gemma))
    gemma = _copy(sae_folders["gemma"], tmp_path / "g2")
    arrays = dict(np.load(gemma / "params.npz"))
    np.savez(gemma / "params.npz", **{**arrays, "W_enc": arrays["W_enc"].astype(np.int64)})
    with pytest.raises(LoadError, match=r"W_enc. has dtype int64; accepted: a floating-point dtype"):
        load_sae(str(gemma))
    assert zipfile  # (npz files are zip archives)


# -- codebook records -------------------------------------------------------------------------------
def test_code_records_from_a_wrong_folder_is_a_load_error(tmp_path):
    from pyvene_like.codebook import CodeRecords

    with pytest.raises(LoadError, match=r"CodeRecords.load_from_disk: '.*nowhere' is not a folder; expected a "
                                        r"folder written by CodeRecords.save_to_disk holding 'codes', 'tokens', "
                                        r"'fires.safetensors'"):
        CodeRecords.load_from_disk(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "fires.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LoadError, match=r"'.*half' lacks 'codes', 'tokens'; .*\(it holds: fires.safetensors\)"):
        CodeRecords.load_from_disk(tmp_path / "half")
    (tmp_path / "half" / "codes").mkdir()
    (tmp_path / "half" / "tokens").mkdir()
    with pytest.raises(LoadError, match=r"fires.safetensors is not a readable safetensors file"):
        CodeRecords.load_from_disk(tmp_path / "half")
