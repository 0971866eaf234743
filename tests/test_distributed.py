"""Two CPU processes under ``torchrun`` (gloo) against one process with gradient accumulation.

``tests/dist_worker.py`` is launched once for the module with ``torchrun --standalone
--nproc_per_node 2``, as a user would launch it: no ``cpu=True``, no launch flag. The same
script's ``run`` runs here in one process with ``gradient_accumulation_steps=2`` (two
processes x one micro-batch = one process x two micro-batches per optimizer step), and the
results must agree: rotations, boundaries, the learning-rate and temperature schedules, the
reduced history, IIA; checkpoints are written by one process and resume under the other
world size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import pyvene_like as pv
from pyvene_like.training.distributed import gather_rows, shard_rows

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), *args]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process reference (in this process) and the two ranks' results."""
    from dist_worker import run

    tmp = tmp_path_factory.mktemp("dist")
    one = run(2, checkpoint_dir=tmp / "one")
    out = tmp / "two"
    out.mkdir()
    torchrun(str(out), str(tmp / "one" / "epoch-1"))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return SimpleNamespace(one=one, ranks=ranks, out=out, tmp=tmp)


def close(a, b, atol=1e-6):
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=atol, rtol=1e-5)


def same_history(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g.keys() - {"seconds"}:
            if isinstance(g[k], dict):  # per-id IIA: JSON turned the int ids into strings
                assert {str(i): v for i, v in w[k].items()} == pytest.approx(g[k], abs=1e-6)
            else:
                assert g[k] == pytest.approx(w[k], abs=1e-6), k


def test_no_flag_makes_two_data_parallel_processes(runs):
    for r, got in enumerate(runs.ranks):
        b = got["boundless"]
        assert got["rank"] == r and b["world"] == 2
        # each process takes half the optimizer steps' micro-batches and caches half the sources
        assert b["global_step"] == b["total_steps"] == runs.one["boundless"]["global_step"] == 8
        assert b["cached"] and b["cache_rows"] == 64


def test_same_rotation_history_and_iia_as_one_process_with_accumulation(runs):
    one = runs.one
    for got in runs.ranks:
        for part in ("boundless", "rotated"):
            close(got[part]["rotation"], one[part]["rotation"])
            same_history(got[part]["history"], one[part]["history"])
        close(got["boundless"]["boundaries"], one["boundless"]["boundaries"])
    # the history is the reduced one, the same on every process (seconds included)
    assert runs.ranks[0]["boundless"]["history"] == runs.ranks[1]["boundless"]["history"]


def test_disk_source_cache_written_by_rank_trains_like_memory(runs):
    from datasets import Dataset

    for got in runs.ranks:
        disk, mem = got["boundless_disk"], got["boundless"]
        assert disk["source_cache"] == "disk" and mem["source_cache"] == "memory"
        assert disk["cache_rows"] == 64  # each process computed its own half only ...
        for key in ("rotation", "boundaries", "temperature"):
            assert disk[key] == mem[key]  # ... and training read the same values, bit for bit
        assert [{k: v for k, v in e.items() if k != "seconds"} for e in disk["history"]] == \
            [{k: v for k, v in e.items() if k != "seconds"} for e in mem["history"]]
    # ... into one folder, one file per process, rows in order
    files = sorted((runs.out / "sources").iterdir())
    assert [f.name for f in files] == ["sources-00000-of-00002.arrow", "sources-00001-of-00002.arrow"]
    assert [len(Dataset.from_file(str(f))) for f in files] == [64, 64]


def test_temperature_schedule_completes(runs):
    assert runs.one["boundless"]["temperature"] == pytest.approx(0.1)
    for got in runs.ranks:
        assert got["boundless"]["temperature"] == pytest.approx(0.1)


def test_sharded_evaluate_counts_each_example_once(runs):
    want = runs.one["rotated"]["eval"]
    for got in runs.ranks:
        ev = got["rotated"]["eval"]
        assert ev["n_examples"] == 50 and ev["n_per_id"] == want["n_per_id"]
        assert ev["iia"] == pytest.approx(want["iia"], abs=1e-6)
        assert ev["iia_per_id"] == pytest.approx(want["iia_per_id"], abs=1e-6)
        assert ev["factual_accuracy"] == pytest.approx(want["factual_accuracy"], abs=1e-6)
        # 25 rows per process (50 / 2), each run twice: intervened and factual
        assert got["rotated"]["eval_rows"] == 2 * 25
    assert runs.one["rotated"]["eval_rows"] == 2 * 50


def test_one_checkpoint_writer(runs):
    lines = (runs.out / "writes-rank0.txt").read_text().split()
    assert [Path(p).name for p in lines] == ["epoch-1", "epoch-2"]
    assert not (runs.out / "writes-rank1.txt").exists()


def test_resume_under_another_world_size(runs):
    from dist_worker import run

    # two processes resume the one-process run's epoch-1 checkpoint ...
    for got in runs.ranks:
        close(got["resumed"]["rotation"], runs.one["rotated"]["rotation"])
        assert got["resumed"]["global_step"] == 8
    # ... and one process resumes the two processes' checkpoint
    again = run(2, resume=runs.out / "ckpt" / "epoch-1", boundless_run=False)["rotated"]
    close(again["rotation"], runs.ranks[0]["rotated"]["rotation"])
    same_history(again["history"], runs.ranks[0]["rotated"]["history"])


def test_sae_and_codebook_training_stay_identical_across_processes(runs):
    a, b = (r["features"] for r in runs.ranks)
    assert a == b  # weights, codes (dead ones replaced from the main process) and reduced history
    assert a["codebook"]["history"] and sum(a["codebook"]["replaced"].values()) > 0


def test_sharded_collect_activations_is_one_dataset_in_order(runs):
    from dist_worker import collect

    want = collect()
    a, b = runs.ranks[0]["collect"], runs.ranks[1]["collect"]
    # process 0 read batches 0 and 2 (6 examples), process 1 batches 1 and 3 (4 examples)
    assert (a["examples_read"], b["examples_read"]) == (6, 4) and want["examples_read"] == 10
    assert a["folder"] == b["folder"] and a["files"] == b["files"] == want["files"]  # the parts are merged away
    for got in (a, b):
        assert got["metadata"] == want["metadata"]
        assert got["rows"].keys() == want["rows"].keys()
        for col, values in want["rows"].items():
            if isinstance(values[0], list):  # activations
                close(got["rows"][col], values)
            else:
                assert got["rows"][col] == values, col
    assert want["rows"]["example"] == [0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7, 8, 9]


def test_sharded_collect_every_token_gives_every_process_all_prompts(runs):
    from dist_worker import collect_tokens

    want = collect_tokens()
    a, b = runs.ranks[0]["collect_tokens"], runs.ranks[1]["collect_tokens"]
    # batches of 2 prompts: process 0 read batches 0 and 2 (3 prompts), process 1 batch 1 (2)
    assert (a["examples_read"], b["examples_read"], want["examples_read"]) == (3, 2, 5)
    for got in (a, b):
        assert got["columns"].keys() == want["columns"].keys()
        for col, rows in want["columns"].items():
            assert [len(r) for r in got["columns"][col]] == [len(r) for r in rows] == [1, 2, 3, 4, 5]
            for g, w in zip(got["columns"][col], rows):
                close(g, w)


def test_shard_rows_cover_every_row_once():
    for n, world in ((7, 3), (50, 2), (1, 4), (8, 4)):
        states = [SimpleNamespace(num_processes=world, process_index=r) for r in range(world)]
        shards = [shard_rows(n, s) for s in states]
        assert len({len(s) for s in shards}) == 1  # the same length everywhere (all-gather needs it)
        assert torch.equal(torch.cat(shards)[:n], torch.arange(n))
    assert torch.equal(shard_rows(5, None), torch.arange(5))
    assert torch.equal(gather_rows(torch.arange(3), 3, None), torch.arange(3))


def test_fsdp_is_refused_with_what_to_use_instead(monkeypatch):
    """accelerate launch --use_fsdp sets ACCELERATE_USE_FSDP; on a CPU-only machine accelerate would
    silently run plain data parallel instead, on GPUs FSDP would break training: refused either way."""
    from dist_worker import data, rotated

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    train, _ = data()
    with pytest.raises(pv.ConfigError, match=r"training interventions: FSDP is not supported: FSDP was asked for "
                                             r".*plain data parallel.*device_map='auto'"):
        pv.Trainer(rotated(), train, subspaces={0: [0], 1: [1], 2: [0, 1]})
    with pytest.raises(pv.ConfigError, match="train_sae: FSDP is not supported"):
        from pyvene_like.sae import train_sae

        train_sae(torch.randn(8, 4), 8, k=2, show_progress=False)


def test_fsdp_wrapped_model_runs_interventions_but_training_is_refused(runs):
    for got in runs.ranks:
        assert got["fsdp"]["interchange_equal"]
        assert "FSDP is not supported: the model has FSDP-wrapped modules" in got["fsdp"]["refused"]
        assert "device_map='auto'" in got["fsdp"]["refused"]
