"""The browser app at the request level (Starlette's TestClient, no socket, no browser): paths in
requests cannot leave the served folders, token text that is HTML travels as data and the page
can only run its own script, and bad requests get the library's message."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from app_files import INJECT, build

from pyvene_like.errors import ConfigError, LoadError

pytest.importorskip("starlette", reason="the app extra (pip install pyvene_like[app]) is not installed")

STATIC = Path(__file__).resolve().parents[1] / "pyvene_like" / "app" / "static"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``<tmp>/served`` (what the app may read: the tiny model's files, and a symlink out) and
    ``<tmp>/outside`` (a patching result it must not read)."""
    top = tmp_path_factory.mktemp("top")
    build(top / "served")
    (top / "outside").mkdir()
    for name in ("patching.json", "patching.safetensors"):
        (top / "outside" / name).write_bytes((top / "served" / "patching" / name).read_bytes())
    os.symlink(top / "outside", top / "served" / "link_out")
    return top / "served"


@pytest.fixture(scope="module")
def workspace(served):
    from pyvene_like.app import Workspace

    return Workspace([served])


@pytest.fixture(scope="module")
def client(workspace):
    from starlette.testclient import TestClient

    from pyvene_like.app import create_app

    return TestClient(create_app(workspace, allowed_hosts=["testserver"]))


@pytest.mark.parametrize("path, message", [
    ("served/../outside", "'..' may not appear in it"),
    ("served/patching/../../outside", "'..' may not appear in it"),
    ("/etc/passwd", "give it relative to a served folder"),
    ("~/.ssh", "give it relative to a served folder"),
    ("C:/Windows/win.ini", "give it relative to a served folder"),
    ("served\\..\\outside", "give it relative to a served folder"),
    ("outside/patching", "'outside' is not one of ['served']"),
    ("served/link_out", "it leads outside the served folder 'served'"),
    ("", "path must be '<folder label>/<path inside it>'"),
])
def test_paths_that_leave_the_served_folders_are_refused(client, path, message):
    r = client.get("/api/patching", params={"path": path})
    assert r.status_code == 403
    assert message in r.json()["error"]
    r = client.post("/api/interventions/run", json={"folder": path, "text": "the cat"})
    assert r.status_code == 403
    assert message in r.json()["error"]


def test_an_encoded_dot_dot_is_refused_too(client):
    r = client.get("/api/patching?path=served%2F..%2Foutside")
    assert r.status_code == 403
    assert "'..' may not appear in it" in r.json()["error"]


def test_the_static_route_serves_only_the_pages_own_files(client):
    assert client.get("/static/app.js").status_code == 200
    for url in ("/static/../workspace.py", "/static/%2e%2e/workspace.py", "/static/..%2fworkspace.py"):
        assert client.get(url).status_code == 404, url


def test_the_file_list_holds_only_what_is_under_the_roots_and_follows_no_symlink(client, served):
    files = client.get("/api/files").json()
    assert files["roots"] == ["served"]
    every = [p for paths in files["files"].values() for p in paths]
    assert every and all(p.startswith("served/") for p in every)
    assert files["files"]["patching"] == ["served/patching", "served/patching_heads"]  # not served/link_out


def test_a_folder_of_another_kind_is_a_400_naming_what_it_is(client):
    r = client.get("/api/patching", params={"path": "served/records"})
    assert r.status_code == 400
    assert r.json()["error"] == "path 'served/records' is not a saved patching folder (it looks like: records)"


def test_html_in_token_text_travels_as_json_data(client, workspace):
    book = workspace.codebooks("served/records")[0]["name"]
    rows = client.get("/api/codes/list", params={"records": "served/records", "codebook": book}).json()
    row = next(r for r in rows if INJECT in r["top_tokens"])
    r = client.get("/api/codes/code", params={"records": "served/records", "row": row["row"]})
    assert r.headers["content-type"] == "application/json"
    assert any(c["token"] == INJECT for c in r.json()["contexts"])


def test_the_page_can_run_only_its_own_script(client):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"<script>|\son\w+=", r.text)  # no inline script, no handler attributes


def test_the_script_builds_the_page_from_text_nodes_only():
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


def test_a_request_for_another_host_name_is_refused(client):
    r = client.get("/api/files", headers={"host": "evil.example"})
    assert r.status_code == 400


@pytest.mark.parametrize("url, body, message", [
    ("/api/codes/search", None, "the request body must be a JSON object"),
    ("/api/codes/search", [1, 2], "the request body must be a JSON object"),
    ("/api/codes/search", {"records": "served/records"}, "the request lacks 'pattern'"),
    ("/api/codes/search", {"records": "served/records", "pattern": "("}, "is not a valid regular expression"),
    ("/api/codes/search", {"records": "served/records", "pattern": "a", "top": 0}, "top must be an int in 1..1000, got 0"),
    ("/api/codes/force", {"codebooks": "served/codebooks", "prompt": "the cat", "codes": "Code: x"},
     "Code 'x' is not a non-negative integer"),
    ("/api/codes/force", {"codebooks": "served/codebooks", "prompt": "the cat", "codes": "Code: 1, Layer: 0",
                          "max_new_tokens": 1000}, "max_new_tokens must be an int in 1..64, got 1000"),
    ("/api/sae/steer", {"sae": "served/sae", "prompt": "the cat", "features": [48]},
     "features[] must be an int in 0..47, got 48"),
    ("/api/interventions/run", {"folder": "served/interventions", "text": ""}, "text must be non-empty text"),
])
def test_bad_requests_get_the_libraries_message(client, url, body, message):
    r = client.post(url, content=b"{not json" if body is None else json.dumps(body))
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_bad_query_values_get_a_400(client):
    r = client.get("/api/codes/code", params={"records": "served/records", "row": "x"})
    assert (r.status_code, r.json()["error"]) == (400, "row must be an integer, got 'x'")
    r = client.get("/api/codes/code", params={"records": "served/records", "row": 10**6})
    assert r.status_code == 400 and "row must be an int in 0..31" in r.json()["error"]
    r = client.get("/api/codes/list", params={"records": "served/records", "codebook": "nope"})
    assert r.status_code == 400 and "codebook 'nope' is not in 'served/records'" in r.json()["error"]


def test_workspace_refuses_roots_and_models_that_are_not_folders(tmp_path):
    from pyvene_like.app import Workspace

    with pytest.raises(LoadError, match=r"serve: '.*absent' is not a folder; give folders holding saved codebooks"):
        Workspace([tmp_path / "absent"])
    with pytest.raises(LoadError, match=r"serve: --model '.*absent' is not a folder; give a folder written by save_pretrained"):
        Workspace([tmp_path], model=tmp_path / "absent")
    with pytest.raises(ConfigError, match="serve: give at least one folder to serve"):
        Workspace([])
    with pytest.raises(ConfigError, match=r"start the app with --model FOLDER .* the served folders hold 0 model folders"):
        Workspace([tmp_path]).model_folder()


def test_two_roots_with_the_same_name_get_distinct_labels(tmp_path):
    from pyvene_like.app import Workspace

    (tmp_path / "a" / "out").mkdir(parents=True)
    (tmp_path / "b" / "out").mkdir(parents=True)
    ws = Workspace([tmp_path / "a" / "out", tmp_path / "b" / "out"])
    assert ws.roots == {"out": (tmp_path / "a" / "out").resolve(), "out-2": (tmp_path / "b" / "out").resolve()}
