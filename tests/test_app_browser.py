"""The browser app driven in headless Chromium (Debian's ``chromium``, through Playwright): every
page loads on files a tiny model wrote, a code search runs, a forced code changes the generated
text, SAE features and steering show, a heatmap answers hover, a saved intervention runs.

Chromium missing is a failure that says how to install it, not a skip; set
``PYVENE_LIKE_SKIP_BROWSER=1`` to skip on purpose. A failing test leaves a screenshot in
``$TMPDIR/pyvene_like_browser_failures/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from app_files import INJECT, build

CHROMIUM = os.environ.get("PYVENE_LIKE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(tempfile.gettempdir()) / "pyvene_like_browser_failures"
TIMEOUT_MS = 30_000

if os.environ.get("PYVENE_LIKE_SKIP_BROWSER") == "1":
    pytest.skip("PYVENE_LIKE_SKIP_BROWSER=1: browser tests skipped on purpose", allow_module_level=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    build(root)
    return root


@pytest.fixture(scope="module")
def workspace(files):
    from pyvene_like.app import Workspace

    return Workspace([files])


@pytest.fixture(scope="module")
def base_url(workspace):
    """The app on a free port of 127.0.0.1, served by uvicorn in a thread."""
    import uvicorn

    from pyvene_like.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(workspace), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the app's server did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed ({CHROMIUM} is missing): the browser tests need Debian's "
                    f"chromium (apt-get install -y chromium; .ci/run installs it), or set "
                    f"PYVENE_LIKE_SKIP_BROWSER=1 to skip them")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, base_url, request):
    """A fresh page on the app, ready (files listed); a screenshot is kept when the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    failures_before = request.session.testsfailed
    pg.goto(base_url + "/")
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    if request.session.testsfailed > failures_before:  # this test's call failed (counted before teardown)
        SHOTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            pg.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"the page raised JavaScript errors: {errors}"


def wait_idle(pg):
    pg.wait_for_selector("body[data-busy='0']", state="attached")


def no_injection(pg):
    """The HTML token is on the page as text: no element was made from it, its handler never ran."""
    assert pg.evaluate("window.__pwned") is None
    assert pg.locator("main img").count() == 0


def test_codes_page_lists_codes_and_shows_a_codes_contexts_as_text(page, workspace, files):
    rows = page.locator("#codes-table tbody tr")
    rows.first.wait_for()
    book = page.locator("#codes-book").input_value()
    rel = _rel(files, "records")
    assert rows.count() == len(workspace.code_list(rel, book, None))
    # The code whose top contexts hold the HTML token: its contexts show it, as text.
    target = next(r for r in workspace.code_list(rel, book, None)
                  if any(INJECT in c["token"] + c["left"] + c["right"] for c in workspace.code_detail(rel, r["row"])["contexts"]))
    page.locator(f"#codes-table tr[data-row='{target['row']}']").click()
    page.locator("#code-contexts li").first.wait_for()
    detail = workspace.code_detail(rel, target["row"])
    assert page.locator("#code-contexts li").count() == len(detail["contexts"])
    assert page.locator("#code-contexts mark").first.inner_text() == detail["contexts"][0]["token"]
    assert INJECT in page.locator("#code-contexts").inner_text()
    no_injection(page)


def test_code_search_then_force_a_code_and_the_steered_text_changes(page, workspace, files):
    rel, books = _rel(files, "records"), _rel(files, "codebooks")
    page.fill("#search-pattern", r"\bcat\b")
    page.click("#search-run")
    wait_idle(page)
    found = workspace.code_search(rel, r"\bcat\b")
    rows = page.locator("#search-table tbody tr")
    assert rows.count() == len(found)
    assert rows.first.locator("td").first.inner_text() == found[0]["line"]
    # Force the first found code whose forcing changes greedy text from this prompt.
    prompt = "the cat saw"
    i = next(i for i, m in enumerate(found)
             if (r := workspace.force_codes(books, prompt, m["line"], max_new_tokens=12))["steered"] != r["unsteered"])
    rows.nth(i).locator("button.force-add").click()
    assert page.locator("#force-codes").input_value() == found[i]["line"]
    page.fill("#force-prompt", prompt)
    page.fill("#force-tokens", "12")
    page.click("#force-run")
    wait_idle(page)
    unsteered, steered = page.locator("#force-unsteered").inner_text(), page.locator("#force-steered").inner_text()
    expected = workspace.force_codes(books, prompt, found[i]["line"], max_new_tokens=12)
    assert (unsteered, steered) == (expected["unsteered"], expected["steered"])
    assert steered != unsteered


def test_sae_page_features_scores_and_steering(page, workspace, files):
    sae, animals, objects = _rel(files, "sae"), _rel(files, "prompts/animals.txt"), _rel(files, "prompts/objects.txt")
    page.click("button[data-page='sae']")
    page.select_option("#sae-prompts", animals)
    page.click("#sae-load")
    wait_idle(page)
    summary = workspace.sae_summary(sae, animals)
    assert page.locator("#sae-table tbody tr").count() == len(summary["features"])
    assert f"coverage {summary['coverage']:.3f}" in page.locator("#sae-summary").inner_text()
    top = summary["features"][0]["feature"]
    page.locator(f"#sae-table tr[data-feature='{top}']").click()
    wait_idle(page)
    assert page.locator("#sae-contexts li").count() == len(workspace.sae_feature(sae, animals, top)["contexts"])
    assert page.locator("#steer-features").input_value() == str(top)

    page.select_option("#sae-align", animals)
    page.select_option("#sae-ref", objects)
    page.fill("#sae-topk", "5")
    page.click("#sae-score")
    wait_idle(page)
    scores = workspace.sae_scores(sae, animals, objects, top_k=5)
    cells = page.locator("#sae-score-table tbody tr td:first-child").all_inner_texts()
    assert cells == [str(f) for f in scores["features"]]

    page.fill("#steer-prompt", "the cat saw")
    page.fill("#steer-value", "8")
    page.click("#steer-run")
    wait_idle(page)
    expected = workspace.sae_steer(sae, "the cat saw", [top], value=8.0)
    assert page.locator("#steer-unsteered").inner_text() == expected["unsteered"]
    assert page.locator("#steer-steered").inner_text() == expected["steered"]


def test_patching_heatmap_has_labels_and_answers_hover(page, workspace, files):
    rel = _rel(files, "patching")
    page.click("button[data-page='patching']")
    data = workspace.patching(rel)
    cells = page.locator("#heatmap-svg rect.cell")
    cells.first.wait_for()
    rows, cols = (len(data["labels"][a]) for a in data["axes"])
    assert cells.count() == rows * cols
    labels = page.locator("#heatmap-svg text").all_text_contents()
    assert f"1 {data['tokens'][1]}" in labels and "layer 0" in labels  # position 1 and its token
    # Hover the last column of the last layer: the tooltip names the cell and its value.
    page.locator(f"#heatmap-svg rect[data-i='{rows - 1}'][data-j='{cols - 1}']").hover()
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    value = data["normalized"][rows - 1][cols - 1]
    assert tip.inner_text() == (f"layer {data['labels']['layer'][-1]}, position {data['labels']['position'][-1]} "
                                f"{data['tokens'][-1]}: {value:.4f}")
    page.select_option("#patch-value", "effect")
    assert float(page.locator("#heatmap-svg rect[data-i='0'][data-j='0']").get_attribute("data-value")) == \
        pytest.approx(data["effect"][0][0])


def test_a_three_axis_grid_is_drawn_one_slice_at_a_time(page, workspace, files):
    rel = _rel(files, "patching_heads")
    data = workspace.patching(rel)
    assert data["axes"] == ["layer", "head", "position"]
    page.click("button[data-page='patching']")
    page.select_option("#patch-folder", rel)
    wait_idle(page)
    assert page.locator("#patch-slice-name").inner_text() == "position"
    page.select_option("#patch-slice", "3")
    cells = page.locator("#heatmap-svg rect.cell")
    layers, heads = len(data["labels"]["layer"]), len(data["labels"]["head"])
    assert cells.count() == layers * heads
    assert float(page.locator(f"#heatmap-svg rect[data-i='{layers - 1}'][data-j='1']").get_attribute("data-value")) == \
        pytest.approx(data["normalized"][layers - 1][1][3])


def test_interventions_page_runs_a_saved_intervention(page, workspace, files):
    rel = _rel(files, "interventions")
    page.click("button[data-page='interventions']")
    page.fill("#iv-text", "the cat saw a")
    page.fill("#iv-source", "the dog saw a")
    page.fill("#iv-topk", "5")
    page.click("#iv-run")
    wait_idle(page)
    expected = workspace.run_intervention(rel, "the cat saw a", source="the dog saw a", top_k=5)
    for side in ("original", "intervened"):
        rows = page.locator(f"#iv-{side} tbody tr")
        assert rows.count() == 5
        assert rows.first.locator("td").nth(1).inner_text() == f"{expected[side][0]['prob']:.4f}"
    assert "VanillaIntervention" in page.locator("#iv-summary").inner_text()


def test_a_bad_request_shows_the_libraries_message(page):
    page.fill("#search-pattern", "(")
    page.click("#search-run")
    wait_idle(page)
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "is not a valid regular expression" in error.inner_text()


def _rel(files: Path, name: str) -> str:
    return f"{files.name}/{name}"
