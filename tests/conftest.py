import hashlib
import os
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

transformers.logging.set_verbosity_error()
# Tiny models run fastest on one thread, and a shared CPU does not slow them by contention.
torch.set_num_threads(1)

# Property-based tests: a CI-sized default, and HYPOTHESIS_PROFILE=long for a thorough run.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=60, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=3000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is in the dev extra
    pass


def make_gpt2(seed: int = 0, **kw) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = dict(n_layer=4, n_embd=64, n_head=4, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)
    cfg.update(kw)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


class TinyMLP(nn.Module):
    """A plain (non-HF) module: 8 -> 8 -> 8 -> 2 with ReLUs, seeded; its units are ``layers.i``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)])

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


@pytest.fixture(scope="session")
def gpt2():
    return make_gpt2()


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(1)
    base = torch.randint(0, 1000, (3, 10), generator=g)
    src = torch.randint(0, 1000, (3, 10), generator=g)
    return base, src


# -- a local Hugging Face Hub cache, offline -----------------------------------------------------
def cache_layout(cache: Path, repo_id: str, folder: Path, commit: str = "c" * 40) -> Path:
    """huggingface_hub's cache: blobs, a snapshot of relative symlinks (subfolders kept), refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snap = repo / "snapshots" / commit
    for f in folder.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snap / f.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<tmp>; huggingface_hub read both at import, so its
    constants module is patched as well as the environment."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache
