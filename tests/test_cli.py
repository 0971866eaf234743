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
