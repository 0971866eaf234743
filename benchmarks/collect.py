"""Activation-collection benchmark: ``collect_activations`` to disk vs plain forward passes.

Run from the repository root::

    .venv/bin/python benchmarks/collect.py          # writes benchmarks/results/collect.json

The model has the shape of all-MiniLM-L6-v2 (BERT, 6 layers, width 384, 12 heads, MLP 1536,
vocab 30522; seeded random weights: speed does not depend on the values). The examples are
256 rows of 16 token ids, run in batches of 32 (8 forwards per call). Collected: every head's
output (``head_attention_value_output``, 12 columns of 32) and ``block_output`` (384) at layer 3, and
``mlp_activation`` (1536) at layer 2, at one position per example, with a label per example.

Contenders (one call = all 256 examples):

* ``plain`` -- ``model(**batch)`` over the same 8 batches; nothing kept.
* ``hand_hooks`` -- the same forwards with hand-written hooks that index the same units and
  keep them in Python lists of tensors (in memory; no dataset, no disk). For scale.
* ``collect_activations`` -- ``pyvene_like.analysis.collect_activations(...)``: Collect
  interventions, each batch written to an Arrow file with ``datasets``' ``ArrowWriter``, and
  the memory-mapped ``datasets.Dataset`` returned.

Correctness first: before timing, the dataset's columns must equal the hand hooks' tensors
exactly, and no hook may be left on the model. Timing is round-robin (start rotated every
round), one thread, ``torch.inference_mode()``; ratio = median / plain's median, and speed =
plain's median / collect's median (target >= 0.9).

Memory: ``collect_activations`` runs on streams of 512, 2,048 and 4,096 examples (an
iterable of batches made on the fly, so the inputs are never all in memory); a sampler thread
reads the process's resident set size every 2 ms, and the JSON records each run's peak
growth over the RSS before it, and the Arrow file's size. Flat memory means the peak growth
does not scale with the number of examples while the file does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from pyvene_like.analysis import collect_activations

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import HERE  # noqa: E402

N, SEQ, BATCH = 256, 16, 32
HEAD_LAYER, MLP_LAYER = 3, 2
TARGET_SPEED = 0.9


def build_model() -> transformers.BertModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536, max_position_embeddings=512)
    return transformers.BertModel(cfg).eval()


def make_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, SEQ), generator=g)
    return ({"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            torch.randint(1, SEQ - 1, (n,), generator=g), torch.randint(0, 10, (n,), generator=g))


SITES = [(HEAD_LAYER, "head_attention_value_output"), (HEAD_LAYER, "block_output"), (MLP_LAYER, "mlp_activation")]


def hand_hooks(model, inputs, positions):
    layer = model.encoder.layer[HEAD_LAYER]
    act = model.encoder.layer[MLP_LAYER].intermediate.intermediate_act_fn
    kept = {"heads": [], "block": [], "mlp": []}
    cur = {}

    def keep(name):
        def hook(module, args, output=None):
            x = args[0] if output is None else (output[0] if isinstance(output, tuple) else output)
            kept[name].append(x[cur["rows"], cur["pos"]].clone())
        return hook

    def run():
        for v in kept.values():
            v.clear()
        hs = [layer.attention.output.dense.register_forward_pre_hook(keep("heads")),
              layer.register_forward_hook(keep("block")), act.register_forward_hook(keep("mlp"))]
        try:
            for s in range(0, N, BATCH):
                batch = {k: v[s:s + BATCH] for k, v in inputs.items()}
                cur["pos"] = positions[s:s + BATCH]
                cur["rows"] = torch.arange(len(cur["pos"]))
                model(**batch)
        finally:
            for h in hs:
                h.remove()
        return {k: torch.cat(v) for k, v in kept.items()}

    return run


def plain(model, inputs):
    def run():
        for s in range(0, N, BATCH):
            model(**{k: v[s:s + BATCH] for k, v in inputs.items()})
    return run


def collect(model, inputs, positions, labels, out_dir):
    def run():
        return collect_activations(model, inputs, SITES, positions=positions.tolist(), labels=labels.tolist(),
                                   batch_size=BATCH, output_dir=out_dir, overwrite=True)
    return run


def verify(model, inputs, positions, labels, out_dir) -> dict:
    ref = hand_hooks(model, inputs, positions)()
    ds = collect(model, inputs, positions, labels, out_dir)()
    t = ds.with_format("torch")[:]
    heads = torch.stack([t[f"L{HEAD_LAYER}.head_attention_value_output.H{h}"] for h in range(12)], 1)
    checks = {
        "heads_equal": torch.equal(heads.reshape(N, -1), ref["heads"]),
        "block_output_equal": torch.equal(t[f"L{HEAD_LAYER}.block_output"], ref["block"]),
        "mlp_activation_equal": torch.equal(t[f"L{MLP_LAYER}.mlp_activation"], ref["mlp"]),
        "labels_equal": t["label"].tolist() == labels.tolist(),
    }
    if not all(checks.values()):
        sys.exit(f"ABORT: collect_activations differs from the hand hooks: {checks}")
    common.abort_on_leftover_hooks(model, "ABORT", "calls")
    checks["leftover_hooks"] = 0
    return checks


# -- memory --------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(fn) -> tuple[int, object]:
    base = _rss()
    out, peak = common.run_sampling_peak(fn, _rss)
    return peak - base, out


def memory_runs(model, sizes, tmp: Path) -> list:
    rows = []
    for n in sizes:
        def batches(n=n):  # made on the fly: the inputs are never all in memory
            for s in range(0, n, BATCH):
                inputs, pos, lab = make_data(BATCH, seed=10_000 + s)
                yield {**inputs, "positions": pos.tolist(), "labels": lab.tolist()}

        out_dir = tmp / f"mem_{n}"
        t0 = time.perf_counter()
        growth, ds = peak_rss_growth(lambda b=batches, d=out_dir: collect_activations(
            model, b(), SITES, batch_size=BATCH, output_dir=d, overwrite=True))
        wall = time.perf_counter() - t0
        size = os.path.getsize(ds.cache_files[0]["filename"])
        rows.append({"examples": n, "peak_rss_growth_mb": round(growth / 2**20, 1),
                     "arrow_file_mb": round(size / 2**20, 1), "wall_s": round(wall, 2), "rows": len(ds)})
        del ds
        print(f"  memory: {n} examples: peak RSS +{growth / 2**20:.1f} MB, file {size / 2**20:.1f} MB", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "collect.json"), help="JSON output path")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up rounds")
    ap.add_argument("--memory-sizes", default="512,2048,4096", help="examples per memory run (comma-separated)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = build_model()
    inputs, positions, labels = make_data(N, seed=1)
    tmp = Path(tempfile.mkdtemp(prefix="pvl_bench_collect_"))
    try:
        with torch.inference_mode():
            checks = verify(model, inputs, positions, labels, tmp / "check")
            calls = {
                "plain": plain(model, inputs),
                "hand_hooks": hand_hooks(model, inputs, positions),
                "collect_activations": collect(model, inputs, positions, labels, tmp / "timed"),
            }
            samples = common.time_round_robin(calls, args.rounds, 1, args.warmup)
            stats = common.summarize_vs_plain(samples)
            print(f"[{time.perf_counter() - t0:6.1f}s] timing done", file=sys.stderr)
            memory = memory_runs(model, [int(x) for x in args.memory_sizes.split(",")], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    speed = stats["plain"]["median_ms"] / stats["collect_activations"]["median_ms"]
    result = {
        "benchmark": "collect",
        "machine": common.machine_info(),
        "load_average_1min": os.getloadavg()[0],
        "settings": {
            "threads": 1, "grad_mode": "torch.inference_mode()", "examples": N, "seq": SEQ, "batch": BATCH,
            "model": "BertModel, all-MiniLM-L6-v2 shape (6 x 384, 12 heads, MLP 1536), random weights",
            "sites": [list(s) for s in SITES], "rounds": args.rounds, "warmup_rounds": args.warmup,
            "timing": "round-robin, start rotated each round; one call = 256 examples; ratio = median / plain median",
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        "check": checks,
        "results": stats,
        "collect_speed_vs_plain": speed,
        "target_speed": TARGET_SPEED,
        "memory": memory,
    }
    out = common.write_json(args.out, result)
    print("| contender | median ms (256 examples) | ÷ plain | speed vs plain |")
    print("|---|---:|---:|---:|")
    for name, r in stats.items():
        print(f"| {name} | {r['median_ms']:.1f} | {r['ratio']:.3f}× | {1 / r['ratio']:.3f} |")
    verdict = "meets" if speed >= TARGET_SPEED else "MISSES"
    print(f"\n- collect_activations speed {speed:.3f} of plain forwards vs target ≥ {TARGET_SPEED} ({verdict})")
    for m in memory:
        print(f"- {m['examples']} examples streamed: peak RSS +{m['peak_rss_growth_mb']} MB, "
              f"Arrow file {m['arrow_file_mb']} MB")
    print(common.machine_line(result, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
