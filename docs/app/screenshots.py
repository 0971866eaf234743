"""Screenshots of each page of the browser app, for the README: the test suite's tiny-model files
(``tests/app_files.py``), the app on a free port, headless Chromium through Playwright.

    PYTHONPATH=tests python docs/app/screenshots.py            # writes docs/app/*.png
    PYTHONPATH=tests python docs/app/screenshots.py FOLDER ...  # or serve your own folders
                                                                # (a page with no data stays blank)
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    import torch
    import uvicorn
    from playwright.sync_api import sync_playwright

    from pyvene_like.app import Workspace, create_app

    torch.set_num_threads(1)
    tmp = None
    if argv:
        roots = argv
    else:
        from app_files import build

        tmp = Path(tempfile.mkdtemp()) / "tiny-gpt2"
        build(tmp)
        roots = [tmp]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Workspace(roots)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    idle = "body[data-busy='0']"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("body[data-ready='1']")

            page.locator("#codes-table tbody tr").nth(2).click()
            page.fill("#search-pattern", r"\bcat\b")
            page.click("#search-run")
            page.wait_for_selector(idle, state="attached")
            page.locator("#search-table button.force-add").nth(2).click()
            page.fill("#force-prompt", "the cat saw")
            page.fill("#force-tokens", "12")
            page.click("#force-run")
            page.wait_for_selector(idle, state="attached")
            page.screenshot(path=str(HERE / "codes.png"), full_page=True)

            page.click("button[data-page='sae']")
            page.click("#sae-load")
            page.wait_for_selector(idle, state="attached")
            page.locator("#sae-table tbody tr").first.click()
            page.wait_for_selector(idle, state="attached")
            page.fill("#sae-topk", "5")
            page.click("#sae-score")
            page.wait_for_selector(idle, state="attached")
            page.fill("#steer-prompt", "the cat saw")
            page.fill("#steer-value", "8")
            page.click("#steer-run")
            page.wait_for_selector(idle, state="attached")
            page.screenshot(path=str(HERE / "sae.png"), full_page=True)

            page.click("button[data-page='patching']")
            cell = page.locator("#heatmap-svg rect.cell").last
            cell.hover()
            page.screenshot(path=str(HERE / "patching.png"))

            page.click("button[data-page='interventions']")
            page.fill("#iv-text", "the cat saw a")
            page.fill("#iv-source", "the dog saw a")
            page.fill("#iv-topk", "5")
            page.click("#iv-run")
            page.wait_for_selector(idle, state="attached")
            page.screenshot(path=str(HERE / "interventions.png"))
            browser.close()
    finally:
        server.should_exit = True
        if tmp is not None:
            shutil.rmtree(tmp.parent, ignore_errors=True)
    from PIL import Image

    for name in ("codes", "sae", "patching", "interventions"):  # a palette keeps each PNG small
        path = HERE / f"{name}.png"
        Image.open(path).convert("RGB").quantize(colors=48).save(path, optimize=True)
    print("wrote", ", ".join(str(HERE / f"{n}.png") for n in ("codes", "sae", "patching", "interventions")))


if __name__ == "__main__":
    main(sys.argv[1:])
