"""Patching sweeps: pyvene_like's exact sweep vs a hand-written batched hook sweep, and
attribution patching vs the exact sweep (with their rank correlation).

Run from the repository root::

    .venv/bin/python benchmarks/patching.py            # writes benchmarks/results/patching.json
    .venv/bin/python benchmarks/patching.py --quick    # CI-sized shapes, a smoke run

Cases (random weights, seeded; one thread; ``torch.inference_mode`` does not apply, the
attribution pass needs gradients):

* ``minilm_6x20``: a BERT of all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads), block
  outputs at 6 layers x 20 positions, 4 examples, denoising from counterfactual inputs;
* ``gpt2s_12x64``: GPT-2 small's shape (12 layers, 768 wide), 12 layers x 64 positions, 1
  example: the grid on which attribution patching should be >= 20x faster than exact.

Every exact sweep uses the same chunking (``max_rows`` rows per forward, site-major rows) and
the same metric; before timing, each result is checked equal to the hand-written sweep (max
|diff| <= 1e-4, else the run aborts). Timing: medians of round-robin rounds
(``common.time_round_robin``).

When importable (run with a venv that has them, e.g. ``/tmp/pvenv/bin/python``), pyvene and
nnsight do the same batched sweep the way their documentation shows: pyvene with one
IntervenableModel per layer (a module path on BERT, ``block_output`` on GPT-2) and one call per
chunk, which runs the clean source again each call (pyvene has no source cache); nnsight with
one clean trace saving every block's output, then one trace per layer and chunk that writes
the saved values into the tiled corrupted batch. Otherwise the JSON records them as not
installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

from pyvene_like.analysis import attribution_patching, compare_attribution, patching_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    HERE,
    abort_on_leftover_hooks,
    machine_info,
    peak_rss_anon,
    proc_memory,
    time_round_robin,
    trim_heap,
    write_json,
)


def _block_out(o):
    return o[0] if isinstance(o, tuple) else o


def _chunks(positions, bsz, max_rows):
    per_chunk = max(1, max_rows // bsz)
    for lo in range(0, len(positions), per_chunk):
        chunk = positions[lo:lo + per_chunk]
        yield chunk, torch.tensor(chunk).repeat_interleave(bsz), len(chunk)


def hand_sweep(model, blocks, clean, corrupted, metric, positions, max_rows):
    """The batched sweep written by hand: one clean pass caching every block's output, then per
    layer and chunk of positions one pass of the corrupted batch tiled along the batch, a hook
    writing the clean value at each row's position; and the clean and corrupted runs' metrics
    (what normalises the effects, as the library's sweep returns them)."""
    bsz = clean["input_ids"].shape[0]
    cache = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: cache.__setitem__(i, _block_out(o)))
               for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(**clean)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():  # the unpatched runs' metrics, which normalise the effects
        baselines = metric(model(**clean)), metric(model(**corrupted))
    out = []
    for i, block in enumerate(blocks):
        vals = []
        for chunk, pos, k in _chunks(positions, bsz, max_rows):
            rows = torch.arange(k * bsz)
            src = cache[i][:, chunk].transpose(0, 1).reshape(k * bsz, -1)

            def put(m, a, o, rows=rows, pos=pos, src=src):
                _block_out(o)[rows, pos] = src

            h = block.register_forward_hook(put)
            try:
                with torch.no_grad():
                    res = model(**{key: v.repeat(k, 1) for key, v in corrupted.items()})
            finally:
                h.remove()
            vals.append(metric(res).view(k, bsz))
        out.append(torch.cat(vals))
    return torch.stack(out), baselines  # [layers, positions, batch]


def pyvene_sweep(model, paths, clean, corrupted, metric, positions, max_rows):
    """pyvene 0.1.8: per layer an IntervenableModel interchanging the block output at one
    position per row; each call tiles the corrupted batch as base and the clean one as source."""
    import pyvene as pv

    bsz = clean["input_ids"].shape[0]
    out = []
    for path in paths:
        # an instance: pyvene has no dimension table for BERT, so it cannot build the type itself
        im = pv.IntervenableModel({"component": path, "intervention": pv.VanillaIntervention()}, model=model)
        vals = []
        for _, pos, k in _chunks(positions, bsz, max_rows):
            locs = [[[int(p)] for p in pos.tolist()]]
            with torch.no_grad():
                _, res = im({key: v.repeat(k, 1) for key, v in corrupted.items()},
                            [{key: v.repeat(k, 1) for key, v in clean.items()}],
                            {"sources->base": (locs, locs)})
            vals.append(metric(res).view(k, bsz))
        out.append(torch.cat(vals))
    return torch.stack(out)


def nnsight_sweep(model, modules_of, clean, corrupted, metric, positions, max_rows, tuple_out: bool):
    """nnsight: one clean trace saving each block's output, then per layer and chunk one trace
    of the tiled corrupted batch writing the clean values at each row's position. ``tuple_out``:
    whether a block returns a tuple on this transformers version (a proxy cannot be asked)."""
    from nnsight import NNsight

    # BERT's blocks have submodules named "output"; nnsight says it renames them, every time.
    warnings.filterwarnings("ignore", message=".*nnsight already serves on every module")
    lm = NNsight(model)
    blocks = modules_of(lm)
    bsz = clean["input_ids"].shape[0]
    saved = []
    with torch.no_grad(), lm.trace(**clean):
        for b in blocks:
            o = b.output
            saved.append((o[0] if tuple_out else o).save())
    out = []
    for i, b in enumerate(blocks):
        vals = []
        for chunk, pos, k in _chunks(positions, bsz, max_rows):
            rows = torch.arange(k * bsz)
            src = saved[i][:, chunk].transpose(0, 1).reshape(k * bsz, -1)
            with torch.no_grad(), lm.trace(**{key: v.repeat(k, 1) for key, v in corrupted.items()}):
                o = b.output
                x = o[0] if tuple_out else o
                x[rows, pos] = src
                res = lm.output.save()
            vals.append(metric(res).view(k, bsz))
        out.append(torch.cat(vals))
    return torch.stack(out)


def minilm(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536, max_position_embeddings=512)
    # blocks, pyvene's component for layer i (a module path: pyvene has no BERT mapping)
    return (transformers.BertModel(cfg).eval(), lambda m: list(m.encoder.layer),
            lambda m, i: f"encoder.layer[{i}].output")


def gpt2s(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval(), lambda m: list(m.transformer.h), lambda m, i: f"transformer.h[{i}].output"


def run_case(name, build, bsz, seq, rounds, max_rows, quick, n_positions=None, warmup=1):
    model, modules_of, paths_of = build()
    if quick:  # a smoke run: keep 2 layers
        blocks = modules_of(model)[:2]
        layers = [0, 1]
    else:
        blocks = modules_of(model)
        layers = list(range(len(blocks)))
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    clean = {"input_ids": torch.randint(0, vocab, (bsz, seq), generator=g)}
    corrupted = {"input_ids": torch.randint(0, vocab, (bsz, seq), generator=g)}
    if hasattr(model, "lm_head"):
        def metric(out):
            return out.logits[:, -1, 11] - out.logits[:, -1, 22]
    else:
        w = torch.randn(model.config.hidden_size, generator=g)

        def metric(out):
            return out.last_hidden_state[:, -1] @ w
    positions = list(range(seq))[-(n_positions or seq):]  # a subset: the last positions

    def ours():
        return patching_sweep(model, clean, metric, corrupted=corrupted, layers=layers, positions=positions,
                              max_rows=max_rows, progress=False)

    def hand():
        return hand_sweep(model, blocks, clean, corrupted, metric, positions, max_rows)

    def attribution():
        return attribution_patching(model, clean, metric, corrupted=corrupted, layers=layers, positions=positions)

    exact = ours()
    returns_tuple = []  # what a block returns, seen by the reference run (for nnsight's proxies)
    h = blocks[0].register_forward_hook(lambda m, a, o: returns_tuple.append(isinstance(o, tuple)))
    try:
        reference = hand()[0]
    finally:
        h.remove()
    diff = float((exact.per_example - reference).abs().max())
    if diff > 1e-4:
        sys.exit(f"{name}: pyvene_like's sweep differs from the hand-written sweep by {diff}")
    abort_on_leftover_hooks(model, name, "sweeps")
    approx = attribution()
    stats = compare_attribution(exact, approx, k=10)
    contenders = {"hand_hooks": hand, "pyvene_like": ours}
    peers = {}
    paths = [paths_of(model, i) for i in layers]
    for peer, fn in (("pyvene", lambda: pyvene_sweep(model, paths, clean, corrupted, metric, positions, max_rows)),
                     ("nnsight", lambda: nnsight_sweep(model, lambda lm: [modules_of(lm)[i] for i in layers], clean,
                                                       corrupted, metric, positions, max_rows,
                                                       returns_tuple[0]))):
        try:
            __import__(peer)
        except ImportError:
            peers[peer] = "not installed"
            continue
        got = fn()
        d = float((got - reference).abs().max())
        if d > 1e-4:
            sys.exit(f"{name}: {peer}'s sweep differs from the hand-written sweep by {d}")
        abort_on_leftover_hooks(model, name, peer)
        peers[peer] = f"installed {importlib.metadata.version(peer)}"
        contenders[peer] = fn
    samples = time_round_robin(contenders, rounds=rounds, inner=1, warmup_rounds=warmup)
    attr = time_round_robin({"attribution": attribution}, rounds=rounds, inner=1, warmup_rounds=1)["attribution"]
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "grid": [len(layers), len(positions)], "seq": seq, "batch": bsz, "max_rows": max_rows, "max_abs_diff_vs_hand": diff,
        "hand_hooks_ms": med["hand_hooks"], "pyvene_like_ms": med["pyvene_like"],
        "ratio_vs_hand": med["pyvene_like"] / med["hand_hooks"],
        "paired_ratio_median": statistics.median(a / b for a, b in zip(samples["pyvene_like"], samples["hand_hooks"])),
        "attribution_ms": statistics.median(attr),
        "attribution_speedup": med["pyvene_like"] / statistics.median(attr),
        "spearman": stats["spearman"], "top10_agreement": stats["top_k_agreement"],
        **{peer: status for peer, status in peers.items()},
        **{f"{peer}_ms": med[peer] for peer in peers if peer in med},
        **{f"{peer}_ratio_vs_hand": med[peer] / med["hand_hooks"] for peer in peers if peer in med},
    }


def memory_probe(budget_mb: float) -> dict:
    """One sweep on the MiniLM-shaped case with ``memory_budget`` (no ``max_rows``), in a fresh
    process: the rows per forward the budget chose, and the peak growth of anonymous resident
    memory over the process after the model and inputs were built (glibc heap trimmed first)."""
    model, _, _ = minilm()
    g = torch.Generator().manual_seed(1)
    clean = {"input_ids": torch.randint(0, model.config.vocab_size, (4, 20), generator=g)}
    corrupted = {"input_ids": torch.randint(0, model.config.vocab_size, (4, 20), generator=g)}
    w = torch.randn(model.config.hidden_size, generator=g)
    rows_seen = []

    def metric(out):
        rows_seen.append(out.last_hidden_state.shape[0])
        return out.last_hidden_state[:, -1] @ w

    with torch.no_grad():
        model(**clean)  # the first forward's one-off allocations are not the sweep's
    trim_heap()
    before = proc_memory()["RssAnon"]
    _, peak = peak_rss_anon(lambda: patching_sweep(model, clean, metric, corrupted=corrupted,
                                                   memory_budget=int(budget_mb * 2**20), progress=False))
    return {"budget_mb": budget_mb, "rows_per_forward": max(rows_seen),
            "peak_growth_mb": round((peak - before) / 2**20, 1)}


def memory_part(budgets: list[float]) -> list[dict]:
    out = []
    for b in budgets:  # a fresh process each: the allocator keeps what an earlier sweep freed
        res = subprocess.run([sys.executable, __file__, "--memory-probe", str(b)], capture_output=True, text=True,
                             check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (the correctness check "
                    "already ran every contender once)")
    ap.add_argument("--cases", nargs="*", default=None, help="run only these cases")
    ap.add_argument("--positions", type=int, default=None,
                    help="sweep only the last N positions of gpt2s_12x64 (its full 12 x 64 exact sweep "
                         "takes ~3 min per run on one CPU thread)")
    ap.add_argument("--out", default=str(HERE / "results" / "patching.json"))
    ap.add_argument("--memory-budgets", nargs="*", type=float, default=[16.0, 64.0, 256.0],
                    help="memory_budget values (MB) to check against the measured peak; none to skip")
    ap.add_argument("--memory-probe", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(args.memory_probe)))
        return
    t0 = time.perf_counter()
    rounds = args.rounds or (1 if args.quick else 3)
    cases = {
        "minilm_6x20": (minilm, 4, 8 if args.quick else 20, 80),
        "gpt2s_12x64": (gpt2s, 1, 8 if args.quick else 64, 64),
    }
    results = {}
    print("| case | grid | hand hooks ms | pyvene_like × hand | pyvene × hand | nnsight × hand | attribution ms | "
          "attribution speed-up | Spearman | top-10 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (build, bsz, seq, max_rows) in cases.items():
        if args.cases and name not in args.cases:
            continue
        n_pos = args.positions if name == "gpt2s_12x64" else None
        key = name if n_pos is None else f"{name}_last{n_pos}"  # a cut grid is a case of its own
        r = results[key] = run_case(name, build, bsz, seq, rounds, max_rows, args.quick, n_pos, args.warmup)
        peer = {p: (f"{r[p + '_ratio_vs_hand']:.2f}×" if p + "_ratio_vs_hand" in r else r[p]) for p in ("pyvene", "nnsight")}
        print(f"| {key} | {r['grid'][0]}×{r['grid'][1]} (batch {r['batch']}) | {r['hand_hooks_ms']:.0f} | "
              f"{r['ratio_vs_hand']:.2f}× | {peer['pyvene']} | {peer['nnsight']} | {r['attribution_ms']:.0f} | "
              f"{r['attribution_speedup']:.0f}× | {r['spearman']:.2f} | {r['top10_agreement']:.0%} |")
    for r in results.values():
        r.update(rounds=rounds, wall_s=round(time.perf_counter() - t0, 1))
    memory = memory_part(args.memory_budgets) if args.memory_budgets else []
    if memory:
        print("\n| memory_budget (MB) | rows per forward | peak RssAnon growth (MB) |\n|---:|---:|---:|")
        for m in memory:
            print(f"| {m['budget_mb']:.0f} | {m['rows_per_forward']} | {m['peak_growth_mb']} |")
    if args.cases and Path(args.out).is_file():  # a partial run updates its cases in the file
        old = json.loads(Path(args.out).read_text())
        if old.get("quick") == args.quick:
            results = {**old["cases"], **results}
            memory = memory or old.get("memory_budget", [])
    out = write_json(args.out, {"quick": args.quick, "machine": machine_info(), "cases": results,
                                "memory_budget": memory})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
