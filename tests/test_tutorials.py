"""Tutorials run the way CI runs them: CI-sized with TUTORIAL_SMALL=1."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path):
    env = dict(os.environ, TUTORIAL_SMALL="1")
    proc = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "equals a hand-written hook: True" in proc.stdout or path.stem != "01_quick_tour"
