"""save_pretrained / from_pretrained / push_to_hub: round trips, the Hub cache, bad files."""

import hashlib
import json
import os
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import TinyMLP, cache_layout, make_gpt2
from huggingface_hub import ModelCard
from safetensors.torch import load, load_file, save_file
from tiny_models import build_tiny_model
from torch import nn

import pyvene_like as pv
from pyvene_like import hub
from pyvene_like.errors import ConfigError, LoadError, PyveneLikeWarning

W = 64  # tiny GPT-2 hidden size

# What each built-in type needs beyond the defaults to be built and to do something visible.
NEEDS = {
    "low_rank_rotated_space": {"low_rank_dimension": 8},
    "noise": {"intervention_kwargs": {"noise_level": 0.5, "seed": 7}},
    "lambda": {"intervention_kwargs": {"fn": None}},  # fn filled in by the test
    # SAEs are rebuilt from their settings; their weights (perturbed below) come from the state dict
    "sae_interchange": {"intervention_kwargs": {"sae_config": pv.SAE(W, 96, "topk", k=8).config(), "features": [1, 5]}},
    "sae_steer": {"intervention_kwargs": {"sae_config": pv.SAE(W, 96, "jumprelu").config(), "features": [3, 4],
                                          "mode": "set", "value": [2.0, -1.0]}},
    "sae_ablate": {"intervention_kwargs": {"sae_config": pv.SAE(W, 96, normalize_activations="layer_norm").config(),
                                           "use_error_term": False}},
    "sae_swap": {"intervention_kwargs": {"sae_config": pv.SAE(W, 96, "topk", k=8).config(), "features": [2, 7, 9],
                                         "use_error_term": False}},
}
# "codebook" needs a model wrapped with codebooks: its round trip is in test_codebook.py.
BUILTIN = sorted(
    {cls.registry_name for cls in pv.registered_interventions().values()
     if cls.__module__.startswith("pyvene_like.") and cls.registry_name != "codebook"}
)


def _mix(base, source):
    return 0.25 * base + 0.75 * source


def _perturb(im, seed=0):
    """Move every parameter and floating buffer away from its initial value, so that a
    round trip that forgot something cannot pass by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in im.interventions.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for b in im.interventions.buffers():
            if b.is_floating_point():
                b.mul_(0.75)
    for iv in im.interventions:
        if hasattr(iv, "set_interchange_dim"):
            iv.set_interchange_dim(W - 24)


def _run(im, ids, pos=4):
    base, src = ids
    if all(not iv.needs_source for iv in im.interventions):
        return im({"input_ids": base}, unit_locations={"base": pos}, return_dict=True)
    return im({"input_ids": base}, [{"input_ids": src}], {"sources->base": pos}, return_dict=True)


def _same_outputs(a, b):
    assert torch.equal(a.intervened_outputs.logits, b.intervened_outputs.logits)
    if a.collected_activations is not None:
        assert len(a.collected_activations) == len(b.collected_activations)
        for x, y in zip(a.collected_activations, b.collected_activations):
            assert torch.equal(x, y)


def _same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _edit_config(folder, fn):
    path = Path(folder) / "config.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _rewrite_weights(folder, fn):
    """Change interventions.safetensors and record its new hash, as a re-save would."""
    path = Path(folder) / "interventions.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    _edit_config(folder, lambda d: d["weights"].update(sha256=digest))


@pytest.fixture
def saved(tmp_path, gpt2, ids):
    """A rotated_space + addition save of the tiny GPT-2 and its outputs."""
    im = pv.IntervenableModel(
        [
            pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"),
            pv.RepresentationConfig(2, "block_output", intervention_type="addition", source_representation=torch.randn(W)),
        ],
        gpt2,
    )
    _perturb(im)
    im.save_pretrained(tmp_path / "saved")
    return tmp_path / "saved", im


# -- round trips ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN)
def test_every_registered_intervention_round_trips_bit_exactly(name, tmp_path, gpt2, ids):
    kw = json.loads(json.dumps(NEEDS.get(name, {})))
    functions = None
    if name == "lambda":
        kw["intervention_kwargs"]["fn"] = _mix
        functions = {"_mix": _mix}
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type=name, **kw), gpt2)
    _perturb(im)
    if name == "lambda":
        with pytest.warns(PyveneLikeWarning, match=r"saved by name only .* functions=\{'_mix': <fn>\}"):
            im.save_pretrained(tmp_path)
    else:
        im.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "config.json", "interventions.safetensors"]
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["intervenable_config"]["representations"][0]["intervention_type"] == name
    assert doc["library_version"] == pv.__version__

    loaded = pv.IntervenableModel.from_pretrained(tmp_path, model=gpt2, functions=functions)
    assert type(loaded.interventions[0]) is type(im.interventions[0])
    assert loaded.interventions[0] is not im.interventions[0]
    _same_state(loaded.interventions[0], im.interventions[0])
    if hasattr(im.interventions[0], "rotate_layer"):  # the parametrised, effective weight
        assert torch.equal(loaded.interventions[0].rotate_layer.weight, im.interventions[0].rotate_layer.weight)
    with torch.no_grad():
        out, again = _run(im, ids), _run(loaded, ids)
        _same_outputs(out, again)
        if im.interventions[0].trainable:  # the saved state is what makes the outputs equal
            fresh = pv.IntervenableModel(im.config, gpt2)
            assert not torch.equal(_run(fresh, ids).intervened_outputs.logits, out.intervened_outputs.logits)


def test_round_trip_of_a_mixed_config(tmp_path, gpt2, ids):
    """Linked interventions, an instance, settings, buffers, a float64 source representation."""
    lowrank = pv.LowRankRotatedSpaceIntervention(embed_dim=W, low_rank_dimension=6, subspace_partition=[[0, 2], [2, 6]])
    reps = [
        pv.RepresentationConfig(0, "block_output", intervention_type="rotated_space", intervention_link_key="r",
                                intervention_kwargs={"interchange_dim": 10}),
        pv.RepresentationConfig(1, "mlp_output", intervention=lowrank),
        pv.RepresentationConfig(2, "block_output", intervention_type="rotated_space", intervention_link_key="r"),
        pv.RepresentationConfig(3, "block_output", intervention_type="boundless_rotated_space"),
        pv.RepresentationConfig(3, "attention_output", intervention_type="addition",
                                source_representation=torch.randn(W, dtype=torch.float64)),
    ]
    im = pv.IntervenableModel(reps, gpt2)
    _perturb(im)
    im.interventions[3].set_temperature(0.3)
    im.save_pretrained(tmp_path)

    stored = load_file(str(tmp_path / "interventions.safetensors"))
    assert not any(k.startswith("intervention.2.") for k in stored)  # linked: stored once
    assert stored["source_representation.4"].dtype == torch.float64

    loaded = pv.IntervenableModel.from_pretrained(tmp_path, gpt2)
    assert loaded.interventions[0] is loaded.interventions[2]
    assert loaded.interventions[0].interchange_dim == W - 24  # the setting, not the kwarg
    assert loaded.interventions[1].subspace_partition == [[0, 2], [2, 6]]
    assert loaded.interventions[3].get_temperature().item() == pytest.approx(0.3)
    for a, b in zip(im.interventions, loaded.interventions):
        _same_state(a, b)
    base, src = ids
    sources = [{"input_ids": src}]  # one source for all
    with torch.no_grad():
        a = im({"input_ids": base}, sources, {"sources->base": 4}, subspaces=[None, [1], None, None, None])[1]
        b = loaded({"input_ids": base}, sources, {"sources->base": 4}, subspaces=[None, [1], None, None, None])[1]
    assert torch.equal(a.logits, b.logits)


def test_serial_mode_and_config_fields_survive(tmp_path, gpt2):
    cfg = pv.IntervenableConfig(
        [pv.RepresentationConfig(0, "block_output", max_number_of_units=2, subspace_partition=[[0, 32], [32, 64]]),
         pv.RepresentationConfig(2, "block_output")],
        mode="serial",
    )
    pv.IntervenableModel(cfg, gpt2).save_pretrained(tmp_path)
    loaded = pv.IntervenableModel.from_pretrained(tmp_path, model=gpt2)
    assert loaded.mode == "serial" and loaded.config == cfg


@pv.register_intervention("hub_test_gain")
class _Gain(pv.Intervention):
    """``base + gain * direction``: a tensor constructor argument and a JSON extra state."""

    source_from = None

    def __init__(self, embed_dim=None, subspace_partition=None, direction=None):
        super().__init__(embed_dim, subspace_partition)
        self.register_buffer("direction", direction.clone())
        self.gain = 1.0

    def get_extra_state(self):
        return {"gain": self.gain}

    def set_extra_state(self, state):
        self.gain = state["gain"]

    def forward(self, base, source=None, subspaces=None):
        return base + self.gain * self.direction.to(base.dtype)


def test_user_class_with_tensor_argument_and_extra_state(tmp_path, gpt2, ids):
    d = torch.randn(W)
    im = pv.IntervenableModel(
        [pv.RepresentationConfig(1, "block_output", intervention_type="hub_test_gain", intervention_kwargs={"direction": d}),
         pv.RepresentationConfig(2, "block_output", intervention_type="addition", source_representation=d)],  # same memory
        gpt2,
    )
    im.interventions[0].gain = 2.5
    im.save_pretrained(tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["interventions"][0]["extra_state"] == {"_extra_state": {"gain": 2.5}}
    assert doc["intervenable_config"]["representations"][0]["intervention_kwargs"] == {
        "direction": {"__safetensors__": "intervention_kwargs.0.direction"}}
    loaded = pv.IntervenableModel.from_pretrained(tmp_path, model=gpt2)
    assert loaded.interventions[0].gain == 2.5
    assert torch.equal(loaded.config.representations[1].source_representation, d)
    base, _ = ids
    with torch.no_grad():
        a = im({"input_ids": base}, unit_locations={"base": 3})[1].logits
        b = loaded({"input_ids": base}, unit_locations={"base": 3})[1].logits
    assert torch.equal(a, b)


def test_plain_module_round_trip_and_identity(tmp_path):
    model = TinyMLP()
    im = pv.IntervenableModel(pv.RepresentationConfig(0, "layers.1.output", intervention_type="sigmoid_mask"), model)
    _perturb(im)
    im.save_pretrained(tmp_path)
    ident = json.loads((tmp_path / "config.json").read_text())["base_model"]
    assert ident["hash_of"] == "parameter_shapes" and ident["model_type"] is None and ident["class"] == "TinyMLP"
    loaded = pv.IntervenableModel.from_pretrained(tmp_path, model=model)
    x, s = torch.randn(4, 8), torch.randn(4, 8)
    with torch.no_grad():
        assert torch.equal(im(x, [s], {"sources->base": None})[1], loaded(x, [s], {"sources->base": None})[1])


# -- plain functions ---------------------------------------------------------------------------------
def test_function_interventions_are_saved_by_name_and_given_back(tmp_path, gpt2, ids):
    def double(base, source):
        return 2 * base

    cfg = pv.IntervenableConfig(
        [pv.RepresentationConfig(1, "block_output", intervention_kwargs={"needs_source": False}),
         pv.RepresentationConfig(2, "block_output", intervention_type="zero")],
        intervention_types=[double, None],
    )
    im = pv.IntervenableModel(cfg, gpt2)
    with pytest.warns(PyveneLikeWarning, match=r"representation\(s\) 0 use plain functions as interventions, which "
                                               r"are saved by name only .*functions=\{'.*double': <fn>\}"):
        im.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert "functions=" in card.text
    name = json.loads((tmp_path / "config.json").read_text())["interventions"][0]["function"]
    assert name.endswith("double")

    with pytest.raises(LoadError, match=rf"representation 0 \(layer_1.block_output.pos#0\) was saved with the plain "
                                        rf"function '{name}' as its intervention, and code is not saved; give it "
                                        rf"again: from_pretrained\(\.\.\., functions=\{{'{name}': <function>\}}\)"):
        pv.IntervenableModel.from_pretrained(tmp_path, model=gpt2)
    with pytest.raises(ConfigError, match=r"functions key 'dubble' matches no saved function intervention; accepted: "):
        pv.IntervenableModel.from_pretrained(tmp_path, model=gpt2, functions={name: double, "dubble": double})
    for functions in ({name: double}, {0: double}):
        loaded = pv.IntervenableModel.from_pretrained(tmp_path, model=gpt2, functions=functions)
        assert loaded.interventions[0].fn is double and not loaded.interventions[0].needs_source
        with torch.no_grad():
            _same_outputs(_run(im, ids), _run(loaded, ids))


# -- what cannot be saved ---------------------------------------------------------------------------
def test_unsaveable_configs_are_refused_at_save_time(tmp_path, gpt2):
    class Unregistered(pv.Intervention):
        def forward(self, base, source=None, subspaces=None):
            return base

    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type=Unregistered), gpt2)
    with pytest.raises(ConfigError, match=r"representation 0 uses .*Unregistered, which is not registered; decorate "
                                          r"it with @pyvene_like.register_intervention"):
        im.save_pretrained(tmp_path / "a")
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", group_key=("a", 1)), gpt2)
    with pytest.raises(ConfigError, match=r"representation 0: group_key is \('a', 1\) \(tuple\), which config.json "
                                          r"cannot hold as it is"):
        im.save_pretrained(tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    model_dir = tmp_path / "model"
    gpt2.save_pretrained(model_dir)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output"), gpt2)
    with pytest.raises(ConfigError, match=r"already holds a config.json that is not a pyvene_like save"):
        im.save_pretrained(model_dir)


# -- bad files and mismatches -------------------------------------------------------------------------
def test_unknown_intervention_name_in_config(saved, gpt2):
    folder, _ = saved
    _edit_config(folder, lambda d: d["intervenable_config"]["representations"][0].update(intervention_type="rotatd_space"))
    with pytest.raises(LoadError, match=r"config.json: representation 0: intervention_type 'rotatd_space' is not a "
                                        r"registered intervention\. Accepted names: .*Did you mean one of 'rotated_space', "):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)


def test_missing_truncated_and_altered_weights(saved, gpt2):
    folder, _ = saved
    weights = folder / "interventions.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match=r"interventions.safetensors is not a readable safetensors file \(truncated "
                                        r"or corrupt: .*\); copy or download it again"):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one byte of data changed
    with pytest.raises(LoadError, match=r"interventions.safetensors does not match the sha256 recorded in "
                                        r"config.json .*corrupted or replaced after saving"):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    weights.unlink()
    with pytest.raises(LoadError, match=r"interventions.safetensors is missing; config.json expects it to hold 2 "
                                        r"intervention tensor\(s\)"):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)


def test_missing_extra_and_misshaped_tensors(saved, gpt2):
    folder, _ = saved
    key = "intervention.0.rotate_layer.parametrizations.weight.original"
    _rewrite_weights(folder, lambda t: t.update(stray=torch.zeros(3)))
    with pytest.raises(LoadError, match=r"does not match config.json: 1 unexpected tensor\(s\): stray\."):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    _rewrite_weights(folder, lambda t: (t.pop("stray"), t.pop(key)))
    with pytest.raises(LoadError, match=rf"does not match config.json: missing 1 tensor\(s\) the interventions built "
                                        rf"on this model expect: {key}"):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    _rewrite_weights(folder, lambda t: t.update({key: torch.zeros(W, W - 1)}))
    with pytest.raises(LoadError, match=rf"tensor '{key}' has shape \[64, 63\] but intervention 0 "
                                        rf"\(RotatedSpaceIntervention at layer_1.block_output.pos#0\), built on this "
                                        rf"model \(site width 64\), expects \[64, 64\]"):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    _rewrite_weights(folder, lambda t: t.pop("source_representation.1"))
    with pytest.raises(LoadError, match=r"representation 1: source_representation refers to tensor "
                                        r"'source_representation.1', which interventions.safetensors does not hold"):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)


def test_config_from_a_newer_library_version(saved, gpt2, ids):
    folder, im = saved
    _edit_config(folder, lambda d: d.update(library_version="99.0.0"))
    with pytest.warns(PyveneLikeWarning, match=r"saved by pyvene_like 99.0.0, newer than this pyvene_like "
                                               rf"{pv.__version__}; .* upgrade pyvene_like"):
        loaded = pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    with torch.no_grad():
        _same_outputs(_run(im, ids), _run(loaded, ids))
    _edit_config(folder, lambda d: d.update(format_version=2))
    with pytest.warns(PyveneLikeWarning, match="newer than this"), pytest.raises(
        LoadError, match=r"format_version 2 is newer than the 1 this pyvene_like .* reads \(written by pyvene_like "
                         r"99.0.0\); upgrade pyvene_like"
    ):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    _edit_config(folder, lambda d: (d.update(library_version=pv.__version__, format_version=1),
                                    d["intervenable_config"]["representations"][0].update(new_field=1)))
    with pytest.raises(LoadError, match=r"representation 0: representation field 'new_field' is unknown; accepted: "):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)


def test_loading_onto_another_base_model_warns(saved):
    folder, _ = saved
    other = make_gpt2(n_layer=3)  # same width and type, other config
    with pytest.warns(PyveneLikeWarning, match=r"saved on base model 'GPT2LMHeadModel' \(model_type 'gpt2', config hash "
                                               r"sha256:.*\) but are being loaded onto 'GPT2LMHeadModel' .*; the config "
                                               r"differs, so layers, components and widths may not mean the same thing"):
        pv.IntervenableModel.from_pretrained(folder, model=other)
    narrow = make_gpt2(n_embd=32)
    with pytest.warns(PyveneLikeWarning, match="the config differs"), pytest.raises(
        LoadError, match=r"has shape \[64, 64\] but intervention 0 .* \(site width 32\), expects \[32, 32\]; load onto "
                         r"the base model it was saved on"
    ):
        pv.IntervenableModel.from_pretrained(folder, model=narrow)


def test_loading_onto_another_model_type_warns(tmp_path, gpt2):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    im.save_pretrained(tmp_path)
    neo = build_tiny_model("gpt_neo")
    with pytest.warns(PyveneLikeWarning, match=r"loaded onto .*model_type 'gpt_neo'.*; the model_type differs"):
        loaded = pv.IntervenableModel.from_pretrained(tmp_path, model=neo)
    assert isinstance(loaded.interventions[0], pv.ZeroIntervention)


def test_same_model_loaded_from_elsewhere_does_not_warn(saved, tmp_path):
    folder, _ = saved
    make_gpt2().save_pretrained(tmp_path / "gpt2")
    from transformers import GPT2LMHeadModel

    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")  # a name_or_path, its own dtype entry
    pv.IntervenableModel.from_pretrained(folder, model=reloaded)  # warnings are errors in the tests


def test_bad_folders_and_arguments(tmp_path, gpt2, saved):
    folder, _ = saved
    with pytest.raises(ConfigError, match=r"from_pretrained: model must be the base torch.nn.Module to intervene on, "
                                          r"got NoneType"):
        pv.IntervenableModel.from_pretrained(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match=r"has no config.json \(it holds: nothing\); give a folder written by "
                                        r"save_pretrained"):
        pv.IntervenableModel.from_pretrained(tmp_path / "empty", model=gpt2)
    gpt2.save_pretrained(tmp_path / "model")
    with pytest.raises(LoadError, match=r"not a pyvene_like save \(field 'library' is None, expected 'pyvene_like'\)\. "
                                        r"It looks like a model's own config \(model_type 'gpt2'\)"):
        pv.IntervenableModel.from_pretrained(tmp_path / "model", model=gpt2)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(LoadError, match=r"config.json: not valid JSON"):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    with pytest.raises(LoadError, match=r"is a file; give the folder that holds config.json"):
        pv.IntervenableModel.from_pretrained(folder / "README.md", model=gpt2)
    with pytest.raises(LoadError, match=r"'no/such/local/dir' is neither a local folder nor a valid Hub repo id"):
        pv.IntervenableModel.from_pretrained("no/such/local/dir", model=gpt2)


# -- the Hub cache, offline -------------------------------------------------------------------------
def test_load_by_repo_id_from_the_offline_hub_cache(saved, offline_cache, tmp_path, gpt2, ids):
    folder, im = saved
    snap = cache_layout(offline_cache, "someone/gpt2-das", folder)
    loaded = pv.IntervenableModel.from_pretrained("someone/gpt2-das", model=gpt2)
    with torch.no_grad():
        _same_outputs(_run(im, ids), _run(loaded, ids))
    # a pinned commit, and an explicit cache_dir elsewhere
    again = pv.IntervenableModel.from_pretrained("someone/gpt2-das", model=gpt2, revision="c" * 40)
    _same_state(again.interventions[0], im.interventions[0])
    other = tmp_path / "other-cache"
    cache_layout(other, "someone/gpt2-das", folder, commit="b" * 40)
    loaded = pv.IntervenableModel.from_pretrained("someone/gpt2-das", model=gpt2, cache_dir=other)
    _same_state(loaded.interventions[0], im.interventions[0])
    assert snap.is_dir()


def test_repo_not_in_the_offline_cache_is_a_clear_error(offline_cache, gpt2):
    with pytest.raises(LoadError, match=r"Hub repo 'someone/not-cached' \(revision 'main'\) is not in the local Hub "
                                        r"cache '.*hub' and offline mode is on \(HF_HUB_OFFLINE=1\)"):
        pv.IntervenableModel.from_pretrained("someone/not-cached", model=gpt2)


def test_local_files_only_without_offline_mode(saved, tmp_path, gpt2):
    with pytest.raises(LoadError, match=r"'someone/nothing' \(revision 'v2'\) is not in the local Hub cache .* and "
                                        r"local_files_only=True"):
        pv.IntervenableModel.from_pretrained("someone/nothing", model=gpt2, revision="v2",
                                             cache_dir=tmp_path / "c", local_files_only=True)


# -- push_to_hub ---------------------------------------------------------------------------------------
class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and the files of each upload."""

    instances = []

    def __init__(self, token=None, **kwargs):
        self.token = token
        self.calls = []
        self.uploaded = {}
        RecordingApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        url = huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")
        return url

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, {**kwargs, "folder_path": folder_path}))
        self.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return "commit-info"


def test_push_to_hub_uploads_config_weights_and_card(tmp_path):
    model = make_gpt2()
    model.config._name_or_path = "openai-community/gpt2"
    im = pv.IntervenableModel(
        [pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space"),
         pv.RepresentationConfig(2, "block_output", intervention_type="sigmoid_mask")],
        model,
    )
    _perturb(im)
    api = RecordingApi()
    out = im.push_to_hub("someone/gpt2-das", private=True, api=api, commit_message="DAS at layer 1")
    assert out == "commit-info"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    _, repo_id, kw = api.calls[0]
    assert repo_id == "someone/gpt2-das" and kw["private"] is True and kw["exist_ok"] is True
    _, repo_id, kw = api.calls[1]
    assert repo_id == "someone/gpt2-das" and kw["commit_message"] == "DAS at layer 1" and kw["repo_type"] == "model"
    assert not Path(kw["folder_path"]).exists()  # the temporary folder is cleaned up

    assert sorted(api.uploaded) == ["README.md", "config.json", "interventions.safetensors"]
    doc = json.loads(api.uploaded["config.json"])
    assert doc["library"] == "pyvene_like" and doc["library_version"] == pv.__version__
    assert doc["base_model"]["name_or_path"] == "openai-community/gpt2"
    assert doc["base_model"]["model_type"] == "gpt2"
    assert doc["base_model"]["config_hash"] == hub.model_identity(model)["config_hash"]
    assert [r["intervention_type"] for r in doc["intervenable_config"]["representations"]] == ["rotated_space", "sigmoid_mask"]
    tensors = load(api.uploaded["interventions.safetensors"])
    for i, iv in enumerate(im.interventions):
        for k, v in iv.state_dict().items():
            assert torch.equal(tensors[f"intervention.{i}.{k}"], v)

    card = ModelCard(api.uploaded["README.md"].decode())
    assert card.data.library_name == "pyvene_like"
    assert card.data.base_model == "openai-community/gpt2"
    assert {"pyvene_like", "interventions", "rotated_space", "sigmoid_mask"} <= set(card.data.tags)
    assert "IntervenableModel.from_pretrained('someone/gpt2-das', model=model)" in card.text
    assert "GPT2LMHeadModel.from_pretrained('openai-community/gpt2')" in card.text


def test_push_to_hub_builds_its_own_api_and_honours_revision(monkeypatch, gpt2):
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.instances.clear()
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    im.push_to_hub("someone/zero", token="hf_test", revision="v1")
    (api,) = RecordingApi.instances
    assert api.token == "hf_test"
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[1][2]["branch"] == "v1" and api.calls[2][2]["revision"] == "v1"
    card = ModelCard(api.uploaded["README.md"].decode())
    assert card.data.base_model is None  # a model built from a config has no Hub name
    assert card.data.library_name == "pyvene_like"


# -- the serialization layer on its own ------------------------------------------------------------
def test_saves_written_before_get_config_still_load(saved, gpt2, ids):
    """Format 1 as first written: no per-intervention 'config', settings changed after
    construction under 'settings'."""
    folder, im = saved

    def old_layout(doc):
        for entry in doc["interventions"]:
            entry.pop("config", None)
        doc["interventions"][0]["settings"] = {"interchange_dim": W - 24}

    _edit_config(folder, old_layout)
    loaded = pv.IntervenableModel.from_pretrained(folder, model=gpt2)
    assert loaded.interventions[0].interchange_dim == W - 24
    with torch.no_grad():
        _same_outputs(_run(im, ids), _run(loaded, ids))
    _edit_config(folder, lambda d: d["interventions"][0].update(settings={"interchange_dims": 3}))
    with pytest.raises(LoadError, match=r"saved with setting interchange_dims=3 but RotatedSpaceIntervention"
                                        r".get_config\(\) has no 'interchange_dims'"):
        pv.IntervenableModel.from_pretrained(folder, model=gpt2)


def test_settings_are_saved_through_get_config(saved):
    folder, im = saved
    doc = json.loads((folder / "config.json").read_text())
    assert doc["interventions"][0]["config"] == {"embed_dim": W, "subspace_partition": None, "interchange_dim": W - 24}
    assert doc["interventions"][0]["config"] == im.interventions[0].get_config()
    assert doc["interventions"][1]["config"] == {"embed_dim": W, "subspace_partition": None}


def test_an_instance_get_config_cannot_rebuild_is_refused(tmp_path, gpt2):
    @pv.register_intervention("hub_test_forgetful")
    class Forgetful(pv.Intervention):
        def __init__(self, embed_dim=None, subspace_partition=None, scale: float = 1.0):
            super().__init__(embed_dim, subspace_partition)
            self.scale = scale  # but get_config() is the base's: scale is lost

        def forward(self, base, source=None, subspaces=None):
            return base * self.scale

    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention=Forgetful(W, scale=2.0)), gpt2)
    im.save_pretrained(tmp_path / "ok")  # what get_config() gives rebuilds an equal config

    class Broken(Forgetful):
        def get_config(self):
            return {**super().get_config(), "scale": self.scale, "extra": 1}

    Broken.registry_name = None
    pv.register_intervention("hub_test_broken")(Broken)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention=Broken(W)), gpt2)
    with pytest.raises(ConfigError, match=r"representation 0 holds a Broken instance that Broken.from_config\(.*\) "
                                          r"cannot rebuild .*give intervention_type='hub_test_broken'"):
        im.save_pretrained(tmp_path / "broken")


def test_identity_never_records_a_local_path(tmp_path):
    from pyvene_like import serialization

    model = make_gpt2()
    model.save_pretrained(tmp_path / "gpt2")
    from transformers import GPT2LMHeadModel

    local = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    ident = serialization.model_identity(local)
    assert ident["name_or_path"] is None and str(tmp_path) not in json.dumps(ident)
    assert ident["config_hash"] == serialization.model_identity(model)["config_hash"]
    local.config._name_or_path = "someone/gpt2-tiny"
    assert serialization.model_identity(local)["name_or_path"] == "someone/gpt2-tiny"
    assert hub.model_identity is serialization.model_identity


def test_resolve_file_from_the_offline_cache(offline_cache, tmp_path):
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    (tmp_path / "repo" / "sub" / "cfg.json").write_text("{}")
    cache_layout(offline_cache, "someone/saes", tmp_path / "repo")
    got = hub.resolve_file("someone/saes", "cfg.json", subfolder="sub")
    assert got.read_text() == "{}"
    assert hub.resolve_file("someone/saes", "params.npz", subfolder="sub", required=False) is None
    with pytest.raises(LoadError, match=r"load_sae: 'params.npz' of Hub repo 'someone/saes', subfolder 'sub' "
                                        r"\(revision 'main'\) is not in the local Hub cache .* offline mode is on"):
        hub.resolve_file("someone/saes", "params.npz", subfolder="sub")
    with pytest.raises(LoadError, match=r"load_sae: 'cfg.json' of Hub repo 'someone/absent' \(revision 'main'\) is "
                                        r"not in the local Hub cache"):
        hub.resolve_file("someone/absent", "cfg.json")
    with pytest.raises(LoadError, match=r"'not a repo id!' is neither a local folder nor a valid Hub repo id"):
        hub.resolve_file("not a repo id!", "cfg.json")


def test_checkpoint_files_round_trip_and_refuse_damage(tmp_path, gpt2):
    from pyvene_like import serialization

    im = pv.IntervenableModel(
        [pv.RepresentationConfig(0, "block_output", intervention_type="rotated_space", intervention_link_key="r"),
         pv.RepresentationConfig(1, "block_output", intervention_type="rotated_space", intervention_link_key="r")],
        gpt2,
    )
    _perturb(im)
    state = {"global_step": 7, "loss": torch.tensor(0.25), "history": [{"epoch": 1, "iia": 0.5}]}
    folder = serialization.write_checkpoint(
        tmp_path / "ckpt", {"interventions": im.interventions.state_dict(), "optimizer": {"0.exp_avg": torch.ones(3)}},
        state)
    assert sorted(os.listdir(folder)) == ["checkpoint-interventions.safetensors", "checkpoint-optimizer.safetensors",
                                          "checkpoint.json"]
    im.save_pretrained(folder)  # a save and a checkpoint can share a folder: no name in common
    doc = json.loads((folder / "checkpoint.json").read_text())
    assert doc["tensors"]["interventions"]["aliases"]  # the linked rotation is stored once
    tensors, got = serialization.read_checkpoint(folder)
    assert got == {"global_step": 7, "loss": 0.25, "history": [{"epoch": 1, "iia": 0.5}]}
    again = pv.IntervenableModel(im.config, gpt2)
    again.interventions.load_state_dict(tensors["interventions"])
    for a, b in zip(im.interventions, again.interventions):
        _same_state(a, b)
    assert torch.equal(tensors["optimizer"]["0.exp_avg"], torch.ones(3))
    with pytest.raises(LoadError, match=r"no tensor group 'scheduler'; the checkpoint holds 'interventions', 'optimizer'"):
        serialization.read_checkpoint(folder, ["interventions", "scheduler"])
    path = folder / "checkpoint-optimizer.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(LoadError, match=r"cannot read the checkpoint .*checkpoint-optimizer.safetensors does not "
                                        r"match the sha256 recorded in checkpoint.json"):
        serialization.read_checkpoint(folder)
    path.unlink()
    with pytest.raises(LoadError, match=r"resume_from_checkpoint: .* lacks \['checkpoint-optimizer.safetensors'\]"):
        serialization.read_checkpoint(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match=r"lacks \['checkpoint.json', 'checkpoint-interventions.safetensors'\]; "
                                        r"expected a folder written by save_checkpoint"):
        serialization.read_checkpoint(tmp_path / "empty", ["interventions"])


def test_save_pretrained_can_push_like_the_hub_mixin(monkeypatch, tmp_path, gpt2):
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    RecordingApi.instances.clear()
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    im.save_pretrained(tmp_path, repo_id="someone/zero", push_to_hub=True, token="hf_test")
    (api,) = RecordingApi.instances
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert sorted(api.uploaded) == sorted(os.listdir(tmp_path))
    with pytest.raises(ConfigError, match="push_to_hub=True needs repo_id"):
        im.save_pretrained(tmp_path, push_to_hub=True)


# -- no network: a transport that cannot connect ---------------------------------------------------
@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """huggingface_hub's HTTP client made to fail every request as an unreachable host would
    (online mode, an empty cache); yields the list of URLs it was asked for."""
    import httpx2

    asked = []

    def refuse(request):
        asked.append(str(request.url))
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    huggingface_hub.close_session()
    try:
        yield asked
    finally:
        huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)
        huggingface_hub.close_session()


def test_load_sae_without_network_says_the_hub_could_not_be_reached_at_once(no_network):
    import time

    from pyvene_like.sae import load_sae

    start = time.perf_counter()
    with pytest.raises(LoadError, match=r"load_sae: could not reach the Hugging Face Hub for 'cfg.json' of Hub repo "
                                        r"'someone/saes', subfolder 'layer_3' \(ConnectError: .*name resolution\); "
                                        r"check the network connection .* local_files_only=True or set HF_HUB_OFFLINE=1"):
        load_sae("someone/saes", subfolder="layer_3")
    assert time.perf_counter() - start < 5
    files = [u for u in no_network if "/resolve/" in u]
    assert len(files) == 1, files  # one request, no retries; the first failure stops the detection


def test_from_pretrained_without_network_says_the_hub_could_not_be_reached(no_network, gpt2):
    with pytest.raises(LoadError, match=r"from_pretrained: could not reach the Hugging Face Hub for Hub repo "
                                        r"'someone/gpt2-das' \(ConnectError"):
        pv.IntervenableModel.from_pretrained("someone/gpt2-das", model=gpt2)


def test_push_to_hub_without_network_is_a_load_error(no_network, gpt2):
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="zero"), gpt2)
    with pytest.raises(LoadError, match=r"push_to_hub: could not reach the Hugging Face Hub to push to "
                                        r"'someone/zero' \(ConnectError: .*\); .* save_pretrained"):
        im.push_to_hub("someone/zero", token="hf_test")
    assert not any(h for m in gpt2.modules() for h in (m._forward_hooks, m._forward_pre_hooks))


def test_connection_failure_looks_along_the_cause_chain():
    import httpx2

    from pyvene_like.hub import connection_failure

    conn = httpx2.ConnectError("down")
    try:
        try:
            raise conn
        except httpx2.ConnectError as e:
            raise OSError("wrapped") from e
    except OSError as outer:
        assert connection_failure(outer) is conn
    assert connection_failure(ValueError("x")) is None
    from huggingface_hub.errors import OfflineModeIsEnabled

    assert connection_failure(OfflineModeIsEnabled("asked for")) is None


def test_a_cached_sae_still_loads_without_network(no_network, tmp_path):
    from safetensors.torch import save_file

    from pyvene_like.sae import SAE, load_sae

    repo = tmp_path / "repo" / "layer_3"
    repo.mkdir(parents=True)
    (repo / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 8, "architecture": "standard"}))
    g = torch.Generator().manual_seed(0)
    save_file({"W_enc": torch.randn(4, 8, generator=g), "b_enc": torch.zeros(8),
               "W_dec": torch.randn(8, 4, generator=g), "b_dec": torch.zeros(4)},
              str(repo / "sae_weights.safetensors"))
    cache_layout(Path(huggingface_hub.constants.HF_HUB_CACHE), "someone/saes", tmp_path / "repo")
    sae = load_sae("someone/saes", subfolder="layer_3")
    assert isinstance(sae, SAE) and sae.d_sae == 8
