"""The Trainer's source cache in memory and on disk (memory-mapped Arrow): the same training,
bit for bit; chosen by size under ``"auto"``; values stored exactly whatever their dtype."""

from __future__ import annotations

import gc

import pytest
import torch
from dist_worker import SUBSPACES, boundless, data, rotated

import pyvene_like as pv
from pyvene_like.training import source_cache


def _train(make, mode, **kw):
    train, ev = data()
    im = make()
    tr = pv.Trainer(im, train, ev, subspaces=SUBSPACES if make is rotated else None, epochs=2, batch_size=16,
                    lr=0.5, optimizer=torch.optim.SGD, source_cache=mode, show_progress=False,
                    **({"temperature_schedule": (50.0, 0.1)} if make is boundless else {}), **kw)
    res = tr.train()
    return tr, res, [p.detach().clone() for p in im.interventions.parameters()]


def _same(a, b):
    (_, ra, wa), (_, rb, wb) = a, b
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in ra.history]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in rb.history]  # exact floats
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))


@pytest.mark.parametrize("make", [rotated, boundless])
def test_disk_cache_trains_bit_identically_to_memory(make, tmp_path):
    mem = _train(make, "memory")
    disk = _train(make, "disk", source_cache_dir=tmp_path)
    assert mem[1].source_cache == "memory" and disk[1].source_cache == "disk"
    _same(mem, disk)
    # one Arrow file (one process), every training example's row, memory-mapped: no tensor holds it
    cache = disk[0]._source_cache
    assert [f.name for f in cache.files] == ["sources-00000-of-00001.arrow"] and len(cache) == 128
    assert (tmp_path / "sources-00000-of-00001.arrow").exists()


def test_auto_goes_to_disk_when_the_cache_would_not_fit(monkeypatch):
    monkeypatch.setattr(source_cache, "free_memory", lambda device: 10**12)
    roomy = _train(rotated, "auto")
    monkeypatch.setattr(source_cache, "free_memory", lambda device: 128 * 16 * 4)  # the cache's size: over half of it
    tight = _train(rotated, "auto")
    assert roomy[1].source_cache == "memory" and tight[1].source_cache == "disk"
    _same(roomy, tight)
    # a temporary cache folder goes away with its Trainer
    folder = tight[0]._source_cache.folder
    assert folder.exists()
    del tight
    gc.collect()
    assert not folder.exists()


def test_disk_cache_stores_every_dtype_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(0)
    batch = [torch.randn(10, 2, 3, generator=g).to(torch.bfloat16), None,
             torch.randn(10, 1, 4, generator=g, dtype=torch.float64), torch.randn(10, 3, 2, generator=g).half()]
    halves = [[None if t is None else t[:6] for t in batch], [None if t is None else t[6:] for t in batch]]
    cache = source_cache.write_disk_cache(iter(halves + [halves[1]]), tmp_path, 10, own_rows=10, state=None)
    idx = torch.tensor([9, 0, 3, 3, 7])  # any order, repeats (the last batch above was padding: dropped)
    for got, want in zip(cache.take(idx), batch):
        assert (got is None) == (want is None)
        if want is not None:
            assert got.dtype == want.dtype and torch.equal(got, want[idx])


def test_source_cache_settings_are_checked():
    train, _ = data()
    with pytest.raises(pv.ConfigError, match="source_cache: expected one of"):
        pv.Trainer(rotated(), train, subspaces=SUBSPACES, source_cache="ram")
    with pytest.raises(pv.ConfigError, match="cache_sources=False caches none"):
        pv.Trainer(rotated(), train, subspaces=SUBSPACES, cache_sources=False, source_cache="disk")
