"""Scaling-out benchmark (issue 14): early-stopping Collect, the source cache's memory in memory
and on disk, and two-process training.

Run from the repository root::

    .venv/bin/python benchmarks/scale.py          # writes benchmarks/results/scale.json (~1-2 min)

Three parts, each checked for correctness before it is measured:

* **collect** -- reading layer 1's ``block_output`` (every position) of a 12-layer GPT-2
  (width 256, 4 heads, vocabulary 50,257; random weights), batch 8 x 64 tokens:
  ``IntervenableModel.collect`` (the pass stops after layer 1) against the plain full forward
  ``model(**batch)``; also the same Collect config's ``forward``, which returns the model's
  outputs and so runs it all. Check: the collected tensor equals a hand-written hook's.
  Round-robin timing, one thread, ``torch.inference_mode()``; ratio = median / the full
  forward's median (target <= 0.6).
* **source cache memory** -- the DAS ``Trainer`` (rotated_space at the first layer of an MLP of
  width 1024) over datasets of 4,096 / 16,384 / 32,768 examples, ``source_cache="memory"`` and
  ``"disk"``, one epoch. Read from ``/proc/self/status`` (freed heap handed back with glibc's
  ``malloc_trim`` before each reading): the growth of anonymous resident memory (``RssAnon``:
  what the process itself holds, the cache tensor in memory mode) once the cache is built and
  one epoch has read it, with the Trainer alive; its peak during the run (sampled every 2 ms);
  and the growth of file-backed resident memory (``RssFile``: the memory-mapped Arrow pages,
  the OS's page cache, shared between processes and reclaimable); the cache's own size.
  Check: both modes end with the same rotation (``torch.equal``).
* **2 processes** -- the same DAS training (16,384 examples, batch 64 per process, 2 epochs,
  SGD) launched with ``torchrun --nproc_per_node 2`` (gloo) against one process with
  ``gradient_accumulation_steps=2`` (the same optimizer steps); throughput = examples / training
  seconds, measured inside the processes (launch and imports excluded), one thread per
  process. Check: the rotations agree to 1e-6. On a 2-core machine shared with other work this
  is a correctness check more than a speed figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import pyvene_like as pv

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import HERE, ROOT  # noqa: E402

TARGET_COLLECT = 0.6
D_IN, WIDTH = 16, 1024


# -- (a) collect at layer 1 vs a full forward --------------------------------------------------------
def collect_part(rounds: int, warmup: int) -> dict:
    model = common.build_gpt2(12, 256, 4, 50257, seed=0)
    ids = torch.randint(0, 50257, (8, 64), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids}
    im = pv.IntervenableModel(pv.RepresentationConfig(1, "block_output", intervention_type="collect"), model)
    locs = {"base": [[list(range(64))] * 8]}
    with torch.inference_mode():
        kept = []
        h = model.transformer.h[1].register_forward_hook(lambda m, a, o: kept.append(o[0] if isinstance(o, tuple) else o))
        model(**batch)
        h.remove()
        got = im.collect(batch, unit_locations=locs)[0]
        if not torch.equal(got, kept[0]):
            sys.exit("ABORT: collect at layer 1 differs from a hand-written hook")
        common.abort_on_leftover_hooks(model, "ABORT", "collect")
        calls = {
            "plain": lambda: model(**batch),  # the full forward, LM head included
            "collect_layer1": lambda: im.collect(batch, unit_locations=locs),
            "forward_with_collect": lambda: im(batch, unit_locations=locs),
        }
        stats = common.summarize_vs_plain(common.time_round_robin(calls, rounds, 1, warmup))
    return {"model": "GPT2LMHeadModel 12 x 256, 4 heads, vocab 50257, random weights", "batch": [8, 64],
            "site": "layer 1 block_output, every position", "check": {"equals_hand_hook": True},
            "results": stats, "collect_ratio": stats["collect_layer1"]["ratio"], "target_ratio": TARGET_COLLECT}


# -- (b) and (c): DAS training on an MLP ---------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(D_IN, WIDTH), nn.ReLU()),
                                     nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU())])
        self.head = nn.Linear(WIDTH, 2)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
                    m.bias.zero_()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def das_data(n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randn(n, D_IN, generator=g), "source_input_ids": torch.randn(n, 1, D_IN, generator=g),
            "labels": torch.randint(0, 2, (n,), generator=g)}


def das_model() -> pv.IntervenableModel:
    torch.manual_seed(0)
    rep = pv.RepresentationConfig(0, "block_output", intervention_type="low_rank_rotated_space", low_rank_dimension=8)
    return pv.IntervenableModel(rep, MLP())


def train(n: int, *, batch: int, epochs: int, accumulation: int = 1, **kw) -> tuple[pv.IntervenableModel, pv.Trainer, object]:
    im = das_model()
    tr = pv.Trainer(im, das_data(n), epochs=epochs, batch_size=batch, lr=0.1, optimizer=torch.optim.SGD,
                    gradient_accumulation_steps=accumulation, show_progress=False, **kw)
    return im, tr, tr.train()


def memory_part(sizes: list[int], tmp: Path) -> list:
    rows = []
    for n in sizes:
        rotations = {}
        for mode in ("memory", "disk"):
            common.trim_heap()
            before = common.proc_memory()
            t0 = time.perf_counter()
            extra = {"source_cache_dir": tmp / f"cache_{n}"} if mode == "disk" else {}
            (im, tr, res), peak = common.peak_rss_anon(functools.partial(train, n, batch=512, epochs=1, source_cache=mode, **extra))
            seconds = time.perf_counter() - t0
            common.trim_heap()
            after = common.proc_memory()  # the Trainer and its cache still alive
            rotations[mode] = im.interventions[0].rotate_layer.weight.detach().clone()
            rows.append({
                "examples": n, "mode": res.source_cache, "cache_mb": round(tr._source_cache.nbytes / 2**20, 1),
                "rss_anon_held_mb": round((after["RssAnon"] - before["RssAnon"]) / 2**20, 1),
                "rss_anon_peak_mb": round((peak - before["RssAnon"]) / 2**20, 1),
                "rss_file_growth_mb": round((after["RssFile"] - before["RssFile"]) / 2**20, 1),
                "train_s": round(seconds, 2),
            })
            print(f"  cache {mode:6s} {n:6d} examples: {rows[-1]}", file=sys.stderr)
            del im, tr, res
        if not torch.equal(rotations["memory"], rotations["disk"]):
            sys.exit(f"ABORT: memory and disk caches trained differently at {n} examples")
    return rows


PAR_N, PAR_BATCH, PAR_EPOCHS = 16384, 64, 2


def throughput_run(accumulation: int) -> dict:
    im, tr, res = train(PAR_N, batch=PAR_BATCH, epochs=PAR_EPOCHS, accumulation=accumulation)
    seconds = sum(e["seconds"] for e in res.history)  # the epochs, of the slowest process
    return {"processes": tr.accelerator.num_processes, "optimizer_steps": res.global_step,
            "examples": PAR_N * PAR_EPOCHS, "train_s": round(seconds, 3),
            "examples_per_s": round(PAR_N * PAR_EPOCHS / seconds, 1),
            "rotation": im.interventions[0].rotate_layer.weight.detach().tolist()}


def parallel_part(tmp: Path) -> dict:
    one = throughput_run(accumulation=2)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    out = tmp / "two.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve()), "--worker", str(out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit("ABORT: the 2-process run failed:\n" + done.stderr[-4000:])
    two = json.loads(out.read_text())
    diff = (torch.tensor(two.pop("rotation")) - torch.tensor(one.pop("rotation"))).abs().max().item()
    if diff > 1e-6:
        sys.exit(f"ABORT: 2 processes and 1 process with accumulation differ by {diff:.2e}")
    return {"one_process_accumulation_2": one, "two_processes": two, "max_rotation_difference": diff,
            "speedup": round(two["examples_per_s"] / one["examples_per_s"], 3),
            "note": "2-core machine shared with other work: a correctness check more than a speed figure"}


def worker(out: str) -> None:
    torch.set_num_threads(1)
    result = throughput_run(accumulation=1)
    if int(os.environ.get("RANK", 0)) == 0:
        Path(out).write_text(json.dumps(result))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "scale.json"), help="JSON output path")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds of the collect part")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up rounds of the collect part")
    ap.add_argument("--memory-sizes", default="4096,16384,32768", help="examples per source-cache run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # the torchrun side of the 2-process part
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    collect = collect_part(args.rounds, args.warmup)
    print(f"[{time.perf_counter() - t0:6.1f}s] collect done", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pvl_bench_scale_") as tmp:
        memory = memory_part([int(x) for x in args.memory_sizes.split(",")], Path(tmp))
        print(f"[{time.perf_counter() - t0:6.1f}s] memory done", file=sys.stderr)
        parallel = parallel_part(Path(tmp))
    result = {
        "benchmark": "scale",
        "machine": common.machine_info(),
        "load_average_1min": os.getloadavg()[0],
        "wall_s": round(time.perf_counter() - t0, 1),
        "collect": collect,
        "source_cache_memory": {"model": f"MLP {D_IN} -> {WIDTH} -> {WIDTH} -> 2, low_rank_rotated_space (rank 8) "
                                         f"at layer 0 block_output", "batch": 512, "epochs": 1, "runs": memory},
        "two_processes": parallel,
    }
    out = common.write_json(args.out, result)
    c = collect["results"]
    print("| collect (12-layer GPT-2, 8 x 64 tokens) | median ms | ÷ full forward |")
    print("|---|---:|---:|")
    for name in ("plain", "collect_layer1", "forward_with_collect"):
        print(f"| {name} | {c[name]['median_ms']:.1f} | {c[name]['ratio']:.3f}× |")
    verdict = "meets" if collect["collect_ratio"] <= TARGET_COLLECT else "MISSES"
    print(f"\n- collect at layer 1: {collect['collect_ratio']:.3f}× a full forward vs target ≤ {TARGET_COLLECT} ({verdict})\n")
    print("| examples | cache | cache MB | anonymous RSS held, MB | anonymous RSS peak, MB | mapped file pages, MB |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in memory:
        print(f"| {r['examples']} | {r['mode']} | {r['cache_mb']} | +{r['rss_anon_held_mb']} | +{r['rss_anon_peak_mb']} "
              f"| +{r['rss_file_growth_mb']} |")
    one, two = parallel["one_process_accumulation_2"], parallel["two_processes"]
    print(f"\n- training throughput: 1 process (accumulation 2) {one['examples_per_s']} ex/s, 2 processes "
          f"{two['examples_per_s']} ex/s ({parallel['speedup']}×); rotations agree to {parallel['max_rotation_difference']:.1e}")
    print(common.machine_line(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
