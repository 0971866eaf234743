"""The `pyvene-like` command line on a local model folder (no network)."""

import json

from conftest import make_gpt2

from pyvene_like.cli import main


def test_sites_on_a_local_folder(tmp_path, capsys):
    make_gpt2().save_pretrained(tmp_path / "m")
    assert main(["sites", str(tmp_path / "m"), "--layer", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["block_output"] == {"site": "h.1 (output)", "width": 64, "heads": None, "head_dim": None}
    assert rows["head_key_output"] == {"site": "h.1.attn.c_attn (output, k part)", "width": 64, "heads": 4,
                                       "head_dim": 16}
    assert rows["mlp_activation"] == {"site": "h.1.mlp.act (output)", "width": 256, "heads": None, "head_dim": None}


def test_sites_table_shows_widths_and_heads(tmp_path, capsys):
    make_gpt2(n_embd=32, n_head=2).save_pretrained(tmp_path / "m")
    assert main(["sites", str(tmp_path / "m")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["component", "width", "heads", "head_dim", "site"]
    row = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert row["head_query_output"] == ["32", "2", "16", "h.0.attn.c_attn", "(output,", "q", "part)"]
    assert row["mlp_activation"][:3] == ["128", "-", "-"]


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


def test_info_names_the_kind_and_contents_of_saved_folders(tmp_path, capsys):
    import torch

    import pyvene_like as pv
    from pyvene_like.analysis import patching_sweep

    model = make_gpt2(n_layer=2)
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "mlp_output", intervention_type="vanilla"), model)
    im.save_pretrained(tmp_path / "iv")
    assert main(["info", str(tmp_path / "iv")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "interventions"
    assert doc["interventions"] == [{"layer": 1, "component": "mlp_output", "unit": "pos", "type": "vanilla"}]
    assert doc["base_model"]["model_type"] == "gpt2"

    ids = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(0))
    result = patching_sweep(model, ids, "kl_to_clean", corrupted=ids.flip(1), progress=False)
    result.save(tmp_path / "sweep")
    assert main(["info", str(tmp_path / "sweep")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["kind"], doc["axes"], doc["grid"], doc["examples"]) == ("patching", ["layer", "position"], [2, 5], 1)
    assert [t["cell"] for t in doc["top"]] == [cell for cell, _ in result.top(3)]

    model.save_pretrained(tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["kind"], doc["model_type"], doc["n_layer"], doc["tokenizer"]) == ("model", "gpt2", 2, False)


def test_info_on_a_folder_of_nothing_known_exits_1_and_lists_what_it_holds(tmp_path, capsys):
    (tmp_path / "notes.md").write_text("hello")
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pyvene-like: error: info: {str(tmp_path)!r} is not a folder this library wrote "
                          f"(it holds: notes.md); accepted: save_pretrained (interventions)")
    assert main(["info", str(tmp_path / "absent")]) == 1
    assert capsys.readouterr().err.strip() == f"pyvene-like: error: info: {str(tmp_path / 'absent')!r} does not exist"


def test_info_on_a_corrupt_file_exits_1_with_the_loaders_message(tmp_path, capsys):
    import torch

    from pyvene_like.analysis import patching_sweep

    ids = torch.randint(0, 1000, (1, 4), generator=torch.Generator().manual_seed(0))
    patching_sweep(make_gpt2(n_layer=1), ids, "kl_to_clean", corrupted=ids.flip(1), progress=False).save(tmp_path / "s")
    (tmp_path / "s" / "patching.safetensors").write_bytes(b"broken")
    assert main(["info", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyvene-like: error: ") and "is not a readable safetensors file" in err


def test_serve_refuses_a_folder_that_does_not_exist(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "absent")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"pyvene-like: error: serve: {str(tmp_path / 'absent')!r} is not a folder; give folders holding saved "
        f"codebooks, code records, SAEs, patching results or interventions")


def test_serve_without_the_app_extra_exits_3_and_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    assert main(["serve", str(tmp_path)]) == 3
    assert capsys.readouterr().err.strip() == (
        "pyvene-like: error: serve needs the app extra (uvicorn is not installed): pip install 'pyvene_like[app]'")


def test_serve_starts_the_app_on_the_given_port_bound_to_127_0_0_1(tmp_path, capsys, monkeypatch):
    import pyvene_like.app as app

    calls = {}
    monkeypatch.setattr(app, "serve", lambda ws, host, port: calls.update(roots=ws.roots, host=host, port=port))
    assert main(["serve", str(tmp_path), "--port", "9123"]) == 0
    assert calls == {"roots": {tmp_path.name: tmp_path.resolve()}, "host": "127.0.0.1", "port": 9123}
    assert f"http://127.0.0.1:9123/ serving {tmp_path.name} = {tmp_path.resolve()}" in capsys.readouterr().err


def test_a_bad_port_is_an_argument_error(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        main(["serve", str(tmp_path), "--port", "70000"])
    assert info.value.code == 2
    assert "--port: must be a port number in 0..65535, got '70000'" in capsys.readouterr().err
