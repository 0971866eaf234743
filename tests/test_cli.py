"""The `pyvene-like` command line on a local model folder (no network)."""

import json

from conftest import make_gpt2

from pyvene_like.cli import main


def test_sites_on_a_local_folder(tmp_path, capsys):
    make_gpt2().save_pretrained(tmp_path / "m")
    assert main(["sites", str(tmp_path / "m"), "--layer", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["block_output"] == "h.1 (output)"
    assert rows["head_key_output"] == "h.1.attn.c_attn (output, k part)"
    assert rows["mlp_activation"] == "h.1.mlp.act (output)"


def test_interventions_and_version(capsys):
    assert main(["interventions"]) == 0
    out = capsys.readouterr().out
    assert "vanilla" in out and "AdditionIntervention" in out
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __import__("pyvene_like").__version__


def test_a_layer_the_model_lacks_exits_non_zero_with_one_line(tmp_path, capsys):
    make_gpt2().save_pretrained(tmp_path / "m")
    assert main(["sites", str(tmp_path / "m"), "--layer", "99"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    err = captured.err.strip().splitlines()[-1]  # (transformers may draw progress bars above)
    assert err.startswith("pyvene-like: error: layer 99 is out of range for GPT2Model: it has 4 layers (accepted: 0..3)")


def test_a_bad_path_exits_non_zero_without_a_traceback(tmp_path, capsys):
    assert main(["sites", str(tmp_path / "nowhere" / "model")]) == 1
    captured = capsys.readouterr().err
    assert "Traceback" not in captured
    err = captured.strip().splitlines()[-1]
    assert err.startswith("pyvene-like: error: sites: cannot load a model from ")
    assert "give a local folder written by save_pretrained or a Hub model id" in err


def test_a_negative_layer_is_an_argument_error(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        main(["sites", str(tmp_path), "--layer", "-1"])
    assert info.value.code == 2
    assert "--layer: must be a non-negative int, got '-1'" in capsys.readouterr().err
