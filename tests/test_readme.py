"""Every ```python block of README.md runs as written.

The convention, for whoever edits the README:

* A block runs on its own, in a fresh namespace: it imports and builds what it uses.
* A block whose first line is ``# continues the previous block`` runs in a copy of the names
  the previous ```python block left (which may itself have continued another one).
* A block whose first line is ``# continues "<heading>"`` runs in a copy of the names left by
  the last block under that README heading (the nearest ``#`` heading above a block), for a
  section that builds on an earlier one without repeating it.
* Text may follow the marker on the same line (say which names the block takes). Blocks
  indented under a list item count like the others. ```bash blocks are not run; the ``make``
  targets they name must exist.

The blocks run in a temporary working directory (they write folders such as ``my-sae``), with
``HF_HUB_OFFLINE=1`` (no block may need the network) and the Hub replaced by a local one:
``push_to_hub`` uploads into an offline Hub cache, so ``from_pretrained`` of that repo id reads
it back through ``huggingface_hub`` as it would after a real push. Intervention types and SAE
formats that blocks register are unregistered at the end. A few blocks get a check of their
result below (``CHECKS``), beyond the asserts they carry themselves.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import cache_layout

import pyvene_like as pv
from pyvene_like.registry import INTERVENTIONS
from pyvene_like.sae.formats import SAE_FORMATS

README = Path(__file__).resolve().parents[1] / "README.md"
MAKEFILE = README.parent / "Makefile"

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
HEADING = re.compile(r"^#+ +(.+?) *$", re.M)
CONTINUES = re.compile(r'# continues (?:(?P<previous>the previous block)|"(?P<heading>[^"]+)")')


@dataclass
class Block:
    index: int       # among the python blocks
    line: int        # of the opening fence in README.md
    heading: str     # the nearest heading above
    lang: str
    code: str        # dedented
    parent: int | None = None  # the python block whose names it continues


def parse(text: str) -> tuple[list[Block], list[Block]]:
    """(python blocks, other fenced blocks), with each python block's parent resolved."""
    fences = list(FENCE.finditer(text))
    # A "#" line inside a code block is a comment, not a heading.
    headings = [(h.start(), h.group(1)) for h in HEADING.finditer(text)
                if not any(f.start() < h.start() < f.end() for f in fences)]
    python, other = [], []
    for m in fences:
        above = [h for pos, h in headings if pos < m.start()]
        block = Block(len(python), text.count("\n", 0, m.start()) + 1, above[-1] if above else "",
                      m.group("lang"), textwrap.dedent(m.group("body")))
        (python if block.lang == "python" else other).append(block)
    for b in python:
        first = b.code.splitlines()[0] if b.code.strip() else ""
        if not first.startswith("# continues"):
            continue
        m = CONTINUES.match(first)
        assert m, f"README.md:{b.line}: unreadable marker {first!r}; write '# continues the previous block' " \
                  f"or '# continues \"<heading>\"'"
        if m.group("previous"):
            assert b.index > 0, f"README.md:{b.line}: the first block has no previous block"
            b.parent = b.index - 1
        else:
            earlier = [p.index for p in python[: b.index] if p.heading == m.group("heading")]
            assert earlier, f"README.md:{b.line}: no python block above under the heading {m.group('heading')!r}"
            b.parent = earlier[-1]
    return python, other


BLOCKS, OTHER_BLOCKS = parse(README.read_text(encoding="utf-8"))


# -- the environment the blocks run in --------------------------------------------------------------
class LocalHub:
    """Stands in for ``huggingface_hub.HfApi``: an upload lands in the offline Hub cache."""

    cache: Path
    uploads: dict = {}

    def __init__(self, token=None, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        pass

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        LocalHub.uploads[repo_id] = sorted(p.name for p in Path(folder_path).iterdir())
        cache_layout(LocalHub.cache, repo_id, Path(folder_path))
        return f"https://huggingface.co/{repo_id}/commit/{'c' * 40}"


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    LocalHub.cache = work / "hub-cache"
    LocalHub.cache.mkdir()
    LocalHub.uploads = {}
    registries = [(reg, set(reg.names())) for reg in (INTERVENTIONS, SAE_FORMATS)]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(LocalHub.cache))
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(LocalHub.cache))
        mp.setattr(huggingface_hub, "HfApi", LocalHub)
        yield work
    for reg, before in registries:
        for name in set(reg.names()) - before:
            if name in reg:
                reg.remove(name)


_NAMESPACES: dict[int, dict] = {}


def run_block(i: int) -> dict:
    """Run block ``i`` (after its parents, once each) and return the names it left."""
    if i not in _NAMESPACES:
        block = BLOCKS[i]
        ns = dict(run_block(block.parent)) if block.parent is not None else {"__name__": "__readme__"}
        exec(compile(block.code, f"README.md:{block.line}", "exec"), ns)  # noqa: S102 - the README's own code
        _NAMESPACES[i] = ns
    return _NAMESPACES[i]


# -- checks of what some blocks computed, by heading ---------------------------------------------------
def _check_das(ns, work):
    result = ns["trainer"].evaluate(ns["test"])
    assert result.factual_accuracy >= 0.9 and result.iia >= 0.7, result


def _check_sae_format(ns, work):
    """The example loader loads a folder in its format."""
    from safetensors.torch import save_file

    folder = work / "mine-sae"
    folder.mkdir()
    (folder / "mine.json").write_text('{"d_in": 8, "d_sae": 16}')
    weights = {"W_enc": torch.randn(8, 16), "b_enc": torch.randn(16), "W_dec": torch.randn(16, 8), "b_dec": torch.randn(8)}
    save_file(weights, folder / "mine.safetensors")
    sae = pv.load_sae(folder)
    assert torch.equal(sae.W_dec, weights["W_dec"])


def _check_steering(ns, work):
    assert 0 < ns["scores"].coverage <= 1
    assert ns["out"].shape[0] == 2 and ns["out"].shape[1] <= 12 + 20


def _check_heads(ns, work):
    from pyvene_like.analysis import AttentionHead

    assert AttentionHead(3, 1) in ns["heads"]
    assert ns["result"].test_accuracy >= 0.75, ns["result"].test_accuracy


def _check_saving(ns, work):
    assert LocalHub.uploads == {"you/das-mlp": ["README.md", "config.json", "interventions.safetensors"]}


CHECKS = {
    "Training interventions (DAS)": _check_das,
    "Sparse autoencoders (SAEs)": _check_sae_format,   # the last block under it: the format example
    "Steering toward a target, with an uncertainty figure": _check_steering,
    "Reading models: attention heads, activation datasets, probes": _check_heads,
    "Saving and sharing": _check_saving,
}


# -- the tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", BLOCKS, ids=[f"L{b.line}" for b in BLOCKS])
def test_readme_block_runs(block, readme_env):
    ns = run_block(block.index)
    last_under_heading = block.index == max(b.index for b in BLOCKS if b.heading == block.heading)
    if last_under_heading and block.heading in CHECKS:
        CHECKS[block.heading](ns, readme_env)


def test_readme_blocks_are_found_and_checked():
    """The parser sees every block (an unclosed or oddly indented fence would hide some), and
    every check names a heading that still has a block."""
    text = README.read_text(encoding="utf-8")
    assert len(BLOCKS) + len(OTHER_BLOCKS) == text.count("```") // 2
    assert len(BLOCKS) >= 10
    assert {b.lang for b in OTHER_BLOCKS} <= {"bash"}
    assert set(CHECKS) <= {b.heading for b in BLOCKS}


def test_readme_shell_blocks_name_real_make_targets():
    targets = set(re.findall(r"^([\w-]+):", MAKEFILE.read_text(), re.M))
    for block in OTHER_BLOCKS:
        for line in block.code.splitlines():
            if line.startswith("make "):
                assert line.split()[1] in targets, (block.line, line)


def test_markers_resolve():
    python, _ = parse(textwrap.dedent('''\
        # Top
        ```python
        x = 1
        ```
        ## Next
        ```python
        # continues the previous block
        y = x
        ```
        ```python
        # continues "Top" (x)
        ```
        ```python
        z = 3
        ```
        '''))
    assert [b.parent for b in python] == [None, 0, 0, None]
    with pytest.raises(AssertionError, match="no python block above under the heading"):
        parse('```python\n# continues "Nowhere"\n```\n')
    with pytest.raises(AssertionError, match="unreadable marker"):
        parse("```python\n# continues block 2\n```\n")
