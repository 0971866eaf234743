"""``PatchingResult.save`` / ``PatchingResult.load``: the files the app's heatmaps are read from
(JSON + safetensors, never a pickle), round trips and corrupt folders."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_gpt2

from pyvene_like.analysis import PatchingResult, attribution_patching, patching_sweep
from pyvene_like.errors import LoadError


@pytest.fixture(scope="module")
def model():
    return make_gpt2(n_layer=2)


def _ids(seed, length=5):
    return torch.randint(0, 1000, (2, length), generator=torch.Generator().manual_seed(seed))


def _same(a: PatchingResult, b: PatchingResult):
    assert torch.equal(a.per_example, b.per_example)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
    assert (a.axes, a.labels, a.direction, a.component, a.method, a.tokens) == \
        (b.axes, b.labels, b.direction, b.component, b.method, b.tokens)


@pytest.mark.parametrize("unit", ["pos", "h", "h.pos"])
def test_a_sweep_round_trips_exactly(model, tmp_path, unit):
    comp = "block_output" if unit == "pos" else "head_attention_value_output"
    res = patching_sweep(model, _ids(0), "kl_to_clean", corrupted=_ids(1), component=comp, unit=unit,
                         progress=False, tokens=["a", "<b>", "c", "d", "e"])
    folder = res.save(tmp_path / "r")
    assert sorted(p.name for p in folder.iterdir()) == ["patching.json", "patching.safetensors"]
    back = PatchingResult.load(folder)
    _same(res, back)
    assert torch.equal(back.normalized, res.normalized)


def test_an_attribution_estimate_round_trips(model, tmp_path):
    res = attribution_patching(model, _ids(0), "kl_to_clean", corrupted=_ids(1))
    _same(res, PatchingResult.load(res.save(tmp_path / "a")))
    assert PatchingResult.load(tmp_path / "a").method == res.method


@pytest.fixture
def saved(model, tmp_path):
    return patching_sweep(model, _ids(0), "kl_to_clean", corrupted=_ids(1), progress=False).save(tmp_path / "r")


def _edit(folder, **changes):
    doc = json.loads((folder / "patching.json").read_text())
    doc.update(changes)
    (folder / "patching.json").write_text(json.dumps(doc))


def test_a_folder_without_the_files_says_what_it_holds(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "other.txt").write_text("")
    with pytest.raises(LoadError, match=r"PatchingResult.load: '.*x' has no patching.json \(it holds: other.txt\); "
                                        r"give a folder written by PatchingResult.save"):
        PatchingResult.load(tmp_path / "x")


def test_another_json_is_not_taken_for_a_result(saved):
    (saved / "patching.json").write_text(json.dumps({"library": "pyvene_like"}))
    with pytest.raises(LoadError, match=r"not a saved PatchingResult"):
        PatchingResult.load(saved)


def test_altered_weights_fail_the_recorded_digest(saved):
    data = bytearray((saved / "patching.safetensors").read_bytes())
    data[-1] ^= 1
    (saved / "patching.safetensors").write_bytes(bytes(data))
    with pytest.raises(LoadError, match="does not match the sha256 recorded in patching.json"):
        PatchingResult.load(saved)


def test_labels_that_disagree_with_the_grid_are_refused(saved):
    _edit(saved, labels={"layer": [0], "position": [0, 1, 2, 3, 4]})
    with pytest.raises(LoadError, match=r"'per_example' has shape \[2, 5, 2\], but the labels give a grid of \[1, 5\]"):
        PatchingResult.load(saved)


def test_a_newer_format_is_refused(saved):
    _edit(saved, format_version=99)
    with pytest.raises(LoadError, match="format_version 99 is newer than the 1 this pyvene_like"):
        PatchingResult.load(saved)


def test_tokens_must_be_strings(saved):
    _edit(saved, tokens=[1, 2])
    with pytest.raises(LoadError, match=r"'tokens' must be a list of strings or null, got \[1, 2\]"):
        PatchingResult.load(saved)
