"""Core overhead benchmark: plain forward vs hand-written hooks vs pyvene_like vs pyvene.

Run from the repository root::

    .venv/bin/python benchmarks/run.py                # writes benchmarks/results/core.json
    .venv/bin/python benchmarks/run.py --profile      # also cProfiles the tiny addition case

Everything runs in one process, single-threaded, under ``torch.inference_mode()``. Each
case first checks (once) that pyvene_like's intervened logits equal the hand-written hooks'
logits and aborts if they do not; pyvene (if importable) is checked the same way and left
out of the timing, with the reason recorded, if it fails or differs. Contenders are timed
round-robin (the starting contender rotates every round), and the median is reported.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import pyvene_like as pvl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: shared benchmark machinery)
from common import HERE, PYVENE_STATUS, build_gpt2, machine_info, pv_ref, time_round_robin  # noqa: E402

CONTENDERS = ("plain", "hand_hooks", "pyvene_like", "pyvene")
TARGETS = {"tiny_addition": 1.05, "tiny_interchange": 1.8, "gpt2s_interchange_12": 1.9}


# -- contenders -----------------------------------------------------------------------------
def _remove(handles):
    for h in handles:
        h.remove()


def hand_addition(model, layer, pos, vec):
    block = model.transformer.h[layer]

    def hook(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        x[:, pos] += vec

    def run(base):
        h = block.register_forward_hook(hook)
        try:
            return model(**base)
        finally:
            h.remove()

    return run


def hand_interchange(model, layers, pos):
    """One full source forward capturing every layer's unit, one base forward writing them."""
    blocks = [model.transformer.h[i] for i in layers]

    def run(base, source):
        cache = {}
        handles = []
        try:
            for i, blk in enumerate(blocks):
                def get(module, args, output, i=i):
                    x = output[0] if isinstance(output, tuple) else output
                    cache[i] = x[:, pos].clone()
                handles.append(blk.register_forward_hook(get))
            model(**source)
        finally:
            _remove(handles)
        handles = []
        try:
            for i, blk in enumerate(blocks):
                def put(module, args, output, i=i):
                    x = output[0] if isinstance(output, tuple) else output
                    x[:, pos] = cache[i]
                handles.append(blk.register_forward_hook(put))
            return model(**base)
        finally:
            _remove(handles)

    return run


def make_case_tiny_addition(model, args):
    torch.manual_seed(1)
    base = {"input_ids": torch.randint(0, model.config.vocab_size, (1, 16))}
    vec = torch.randn(model.config.n_embd)
    layer, pos = 1, 15
    hand = hand_addition(model, layer, pos, vec)
    im = pvl.IntervenableModel(pvl.RepresentationConfig(layer, "block_output", intervention_type="addition"), model)
    calls = {
        "plain": lambda: model(**base).logits,
        "hand_hooks": lambda: hand(base).logits,
        "pyvene_like": lambda: im(base, unit_locations={"base": pos}, source_representations=vec)[1].logits,
    }

    def make_pyvene():
        ref = pv_ref.IntervenableModel(
            {"layer": layer, "component": "block_output", "intervention_type": pv_ref.AdditionIntervention},
            model,
        )
        return lambda: ref(base, unit_locations={"base": pos}, source_representations=vec)[1].logits

    return dict(
        id="tiny_addition",
        title="tiny GPT-2, addition @ L1 block_output, last pos",
        description="Addition of a fixed [64] vector at layer 1 block_output, last position; "
                    "batch 1 x 16 tokens; one base forward.",
        shape=dict(batch=1, seq=16, n_layer=4, n_embd=64, n_head=4, vocab=1000),
        calls=calls, make_pyvene=make_pyvene,
    )


def make_case_tiny_interchange(model, args):
    torch.manual_seed(2)
    base = {"input_ids": torch.randint(0, model.config.vocab_size, (1, 16))}
    src = {"input_ids": torch.randint(0, model.config.vocab_size, (1, 16))}
    layer, pos = 2, 15
    hand = hand_interchange(model, [layer], pos)
    im = pvl.IntervenableModel(pvl.RepresentationConfig(layer, "block_output", intervention_type="vanilla"), model)
    calls = {
        "plain": lambda: model(**base).logits,
        "hand_hooks": lambda: hand(base, src).logits,
        "pyvene_like": lambda: im(base, [src], {"sources->base": pos})[1].logits,
    }

    def make_pyvene():
        ref = pv_ref.IntervenableModel(
            {"layer": layer, "component": "block_output", "intervention_type": pv_ref.VanillaIntervention},
            model,
        )
        return lambda: ref(base, [src], {"sources->base": pos})[1].logits

    return dict(
        id="tiny_interchange",
        title="tiny GPT-2, interchange @ L2 block_output, last pos",
        description="Interchange (vanilla) at layer 2 block_output, last position, from one source; "
                    "batch 1 x 16 tokens. Hand hooks: one full source forward capturing + one base "
                    "forward writing.",
        shape=dict(batch=1, seq=16, n_layer=4, n_embd=64, n_head=4, vocab=1000),
        calls=calls, make_pyvene=make_pyvene,
    )


def make_case_gpt2s(model, args):
    torch.manual_seed(3)
    vocab = model.config.vocab_size
    base = {"input_ids": torch.randint(0, vocab, (8, 64))}
    src = {"input_ids": torch.randint(0, vocab, (8, 64))}
    layers, pos = list(range(model.config.n_layer)), 63
    n = len(layers)
    hand = hand_interchange(model, layers, pos)
    im = pvl.IntervenableModel(
        [pvl.RepresentationConfig(i, "block_output", intervention_type="vanilla") for i in layers], model
    )
    calls = {
        "plain": lambda: model(**base).logits,
        "hand_hooks": lambda: hand(base, src).logits,
        "pyvene_like": lambda: im(base, [src] * n, {"sources->base": pos})[1].logits,
    }

    def make_pyvene():
        ref = pv_ref.IntervenableModel(
            [{"layer": i, "component": "block_output", "intervention_type": pv_ref.VanillaIntervention}
             for i in layers],
            model,
        )
        return lambda: ref(base, [src] * n, {"sources->base": pos})[1].logits

    return dict(
        id="gpt2s_interchange_12",
        title="GPT-2-small shape, interchange @ all 12 block_outputs, last pos",
        description="Interchange at all 12 layers' block_output, last position, from one source "
                    "passed as [src]*12 (no group_key); batch 8 x 64 tokens, random init. Hand "
                    "hooks: one full source forward capturing 12 units + one base forward writing.",
        shape=dict(batch=8, seq=64, n_layer=12, n_embd=768, n_head=12, vocab=50257),
        calls=calls, make_pyvene=make_pyvene,
    )


# -- checks ---------------------------------------------------------------------------------
def _compare(a, b) -> tuple[bool, float]:
    if a.shape != b.shape:
        return False, float("inf")
    diff = (a - b).abs().max().item()
    return torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=1e-6), diff


def verify(case, model) -> dict:
    """Run every contender once (this is also the first warm-up); abort on a pyvene_like mismatch."""
    calls = case["calls"]
    out, first_s = {}, {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        out[name] = fn()
        first_s[name] = time.perf_counter() - t0
    check = {}
    changed = not torch.equal(out["hand_hooks"], out["plain"])
    if not changed:
        sys.exit(f"ABORT [{case['id']}]: the hand-written hooks do not change the logits; the case is not an intervention")
    ok, diff = _compare(out["pyvene_like"], out["hand_hooks"])
    check["pyvene_like_vs_hand_hooks"] = {"equal": bool(torch.equal(out["pyvene_like"], out["hand_hooks"])),
                                          "max_abs_diff": diff}
    if not ok:
        sys.exit(
            f"ABORT [{case['id']}]: pyvene_like's intervened logits differ from the hand-written hooks' "
            f"(max abs diff {diff:g}); the benchmark would compare different computations"
        )
    pyvene = {"status": PYVENE_STATUS}
    if pv_ref is not None:
        try:
            fn = case["make_pyvene"]()
            t0 = time.perf_counter()
            logits = fn()
            first_s["pyvene"] = time.perf_counter() - t0
        except Exception as e:
            pyvene = common.pyvene_error(e)
        else:
            ok, diff = _compare(logits, out["hand_hooks"])
            pyvene_check = {"equal": bool(torch.equal(logits, out["hand_hooks"])), "max_abs_diff": diff}
            check["pyvene_vs_hand_hooks"] = pyvene_check
            if ok:
                calls["pyvene"] = fn
                pyvene = {"status": "ok"}
            else:
                pyvene = {"status": "mismatch",
                          "error": f"pyvene logits differ from the hand-written hooks' (max abs diff {diff:g}); not timed"}
    common.abort_on_leftover_hooks(model, f"ABORT [{case['id']}]", "calls")
    check["leftover_hooks"] = 0
    return {"check": check, "pyvene": pyvene, "first_call_s": first_s}


# -- timing ---------------------------------------------------------------------------------
def run_case(case, model, rounds, inner, warmup_rounds, budget_s=None, min_rounds=3, max_rounds=None):
    info = verify(case, model)
    calls = case["calls"]
    if budget_s is not None:
        # The verification calls are the warm-up; they also size the number of rounds.
        per_round = sum(info["first_call_s"][name] for name in calls)
        rounds = max(min_rounds, int(budget_s // max(per_round, 1e-9)))
        if max_rounds is not None:
            rounds = min(rounds, max_rounds)
    samples = time_round_robin(calls, rounds, inner, warmup_rounds)
    results = common.contender_results(CONTENDERS, common.summarize_vs_plain(samples), info["pyvene"])
    return {
        "id": case["id"],
        "title": case["title"],
        "description": case["description"],
        "shape": case["shape"],
        "rounds": rounds,
        "calls_per_sample": inner,
        "warmup_rounds": warmup_rounds,
        "first_call_s": info["first_call_s"],
        "target_pyvene_like_ratio": TARGETS[case["id"]],
        "check": info["check"],
        "results": results,
    }


# -- reporting ------------------------------------------------------------------------------
def markdown_table(cases) -> str:
    lines = ["| case | plain ms | hand hooks × | pyvene_like × | pyvene × |",
             "|---|---:|---:|---:|---:|"]
    for c in cases:
        r = c["results"]
        lines.append(
            f"| {c['title']} | {r['plain']['median_ms']:.3f} | {common.fmt_ratio(r['hand_hooks'])} | "
            f"{common.fmt_ratio(r['pyvene_like'])} | {common.fmt_ratio(r['pyvene'])} |"
        )
    lines.append("")
    for c in cases:
        ratio = c["results"]["pyvene_like"]["ratio"]
        target = c["target_pyvene_like_ratio"]
        verdict = "meets" if ratio <= target else "MISSES"
        lines.append(f"- {c['id']}: pyvene_like {ratio:.2f}× vs target ≤{target}× ({verdict}); "
                     f"{c['rounds']} rounds × {c['calls_per_sample']} calls")
    for c in cases:
        problem = common.pyvene_problem(c["results"]["pyvene"], f"{c['id']}: ")
        if problem:
            lines.append(problem)
    return "\n".join(lines)


def profile_tiny_addition(model, n_calls: int, top: int) -> str:
    """cProfile of pyvene_like's call on the tiny addition case, ranked by self time."""
    case = make_case_tiny_addition(model, None)
    fn = case["calls"]["pyvene_like"]
    rows, total = common.profile_rows(fn, 50, n_calls)
    out = [f"cProfile, {n_calls} pyvene_like calls (tiny addition), total {total * 1e3 / n_calls:.3f} ms/call "
           f"under the profiler", "", "top self time, all functions:",
           f"{'self us/call':>12} {'cum us/call':>12} {'calls/call':>10}  function"]
    out += [common.profile_line(row, n_calls) for row in rows[:top]]
    out += ["", "top self time, pyvene_like functions:"]
    own = common.own_rows(rows)
    own_total = sum(r[0] for r in own)
    out.append(f"(pyvene_like's own Python: {own_total * 1e6 / n_calls:.1f} us/call self time "
               f"under the profiler)")
    out += [common.profile_line(row, n_calls) for row in own[:top]]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "core.json"), help="JSON output path")
    ap.add_argument("--tiny-rounds", type=int, default=150, help="timed rounds for the tiny cases")
    ap.add_argument("--tiny-inner", type=int, default=5, help="calls per timed sample, tiny cases")
    ap.add_argument("--tiny-warmup", type=int, default=20, help="warm-up rounds, tiny cases")
    ap.add_argument("--big-budget", type=float, default=60.0,
                    help="seconds of timing for the 12-layer case (at least 3 rounds)")
    ap.add_argument("--big-max-rounds", type=int, default=15)
    ap.add_argument("--skip-big", action="store_true", help="skip the GPT-2-small case")
    ap.add_argument("--profile", action="store_true", help="cProfile pyvene_like on the tiny addition case")
    ap.add_argument("--profile-calls", type=int, default=3000)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    cases = []
    with torch.inference_mode():
        tiny = build_gpt2(4, 64, 4, 1000, seed=0)
        for make in (make_case_tiny_addition, make_case_tiny_interchange):
            case = make(tiny, args)
            cases.append(run_case(case, tiny, args.tiny_rounds, args.tiny_inner, args.tiny_warmup))
            print(f"[{time.perf_counter() - t_start:6.1f}s] {case['id']} done", file=sys.stderr)
        if not args.skip_big:
            big = build_gpt2(12, 768, 12, 50257, seed=0)
            case = make_case_gpt2s(big, args)
            cases.append(run_case(case, big, None, 1, 0, budget_s=args.big_budget,
                                  max_rounds=args.big_max_rounds))
            print(f"[{time.perf_counter() - t_start:6.1f}s] {case['id']} done", file=sys.stderr)
            del big
        profile = profile_tiny_addition(tiny, args.profile_calls, 25) if args.profile else None

    result = {
        "benchmark": "core",
        "machine": machine_info(),
        "settings": {
            "threads": 1, "grad_mode": "torch.inference_mode()",
            "timing": "round-robin, start rotated each round; per-contender median of per-call ms; "
                      "ratio = median / plain median; paired_ratio_median = median of per-round ratios",
            "model_defaults": "GPT2LMHeadModel, eval(), default attn implementation and use_cache",
            "tiny": {"rounds": args.tiny_rounds, "calls_per_sample": args.tiny_inner,
                     "warmup_rounds": args.tiny_warmup},
            "big": {"budget_s": args.big_budget, "max_rounds": args.big_max_rounds,
                    "warmup": "the verification call (1 per contender)"},
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
        "cases": cases,
    }
    if profile is not None:
        result["profile_tiny_addition"] = profile.splitlines()
    out = common.write_json(args.out, result)
    print(markdown_table(cases))
    print(common.machine_line(result, out))
    if profile is not None:
        print("\n" + profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
