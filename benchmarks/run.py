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
import cProfile
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers

import pyvene_like as pvl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONTENDERS = ("plain", "hand_hooks", "pyvene_like", "pyvene")
TARGETS = {"tiny_addition": 1.05, "tiny_interchange": 1.8, "gpt2s_interchange_12": 1.9}

try:  # pyvene is optional: it is the reference, not a dependency.
    import pyvene as pv_ref  # noqa: E402

    PYVENE_STATUS = f"installed {getattr(pv_ref, '__version__', '?')}"
except ImportError:
    pv_ref = None
    PYVENE_STATUS = "not installed"
except Exception as e:  # pragma: no cover - a broken install
    pv_ref = None
    PYVENE_STATUS = f"import failed: {type(e).__name__}: {e}"


def _pyvene_version() -> str:
    try:
        from importlib.metadata import version

        return version("pyvene")
    except Exception:
        return "not installed"


# -- models ---------------------------------------------------------------------------------
def build_gpt2(n_layer, n_embd, n_head, vocab, seed) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


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
def _leftover_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


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
            pyvene = {"status": "error", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=6)}
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
    left = _leftover_hooks(model)
    if left:
        sys.exit(f"ABORT [{case['id']}]: {left} hooks left on the model after the calls")
    check["leftover_hooks"] = 0
    return {"check": check, "pyvene": pyvene, "first_call_s": first_s}


# -- timing ---------------------------------------------------------------------------------
def time_round_robin(calls: dict, rounds: int, inner: int, warmup_rounds: int) -> dict:
    names = list(calls)
    samples = {n: [] for n in names}
    gc.collect()  # a full collection costs ~0.2 s here: once per case, young generations per round
    for r in range(warmup_rounds + rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        gc.collect(1)
        gc.disable()
        try:
            for name in order:
                fn = calls[name]
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                dt = (time.perf_counter() - t0) / inner
                if r >= warmup_rounds:
                    samples[name].append(dt * 1e3)
        finally:
            gc.enable()
    return samples


def summarize(samples: dict) -> dict:
    res = {}
    plain = samples["plain"]
    med_plain = statistics.median(plain)
    for name, xs in samples.items():
        q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
        paired = [x / p for x, p in zip(xs, plain)]
        res[name] = {
            "median_ms": statistics.median(xs),
            "p25_ms": q[0],
            "p75_ms": q[2],
            "min_ms": min(xs),
            "ratio": statistics.median(xs) / med_plain,
            "paired_ratio_median": statistics.median(paired),
            "n": len(xs),
        }
    return res


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
    stats = summarize(samples)
    results = {}
    for name in CONTENDERS:
        if name in stats:
            results[name] = stats[name]
        elif name == "pyvene":
            results[name] = info["pyvene"]
    if "pyvene" in stats:
        results["pyvene"]["status"] = "ok"
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
def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "pyvene_like"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", "pyvene_like"],
                              capture_output=True, timeout=10).stdout
        diff_sha = hashlib.sha1(diff).hexdigest()[:12] if diff else None
    except Exception:
        commit, dirty, diff_sha = "unknown", None, None
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyvene_like": pvl.__version__,
        "pyvene": PYVENE_STATUS if pv_ref is None else _pyvene_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "pyvene_like_dirty": dirty,
        "pyvene_like_uncommitted_diff_sha1": diff_sha,
        "python_executable": sys.executable,
    }


def _fmt_ratio(entry) -> str:
    if "ratio" in entry:
        return f"{entry['ratio']:.2f}×"
    status = entry.get("status", "")
    return "not installed" if status == "not installed" else f"n/a ({status})"


def markdown_table(cases) -> str:
    lines = ["| case | plain ms | hand hooks × | pyvene_like × | pyvene × |",
             "|---|---:|---:|---:|---:|"]
    for c in cases:
        r = c["results"]
        lines.append(
            f"| {c['title']} | {r['plain']['median_ms']:.3f} | {_fmt_ratio(r['hand_hooks'])} | "
            f"{_fmt_ratio(r['pyvene_like'])} | {_fmt_ratio(r['pyvene'])} |"
        )
    lines.append("")
    for c in cases:
        ratio = c["results"]["pyvene_like"]["ratio"]
        target = c["target_pyvene_like_ratio"]
        verdict = "meets" if ratio <= target else "MISSES"
        lines.append(f"- {c['id']}: pyvene_like {ratio:.2f}× vs target ≤{target}× ({verdict}); "
                     f"{c['rounds']} rounds × {c['calls_per_sample']} calls")
    for c in cases:
        pv = c["results"]["pyvene"]
        if pv.get("status") not in ("ok", "not installed"):
            lines.append(f"- {c['id']}: pyvene {pv.get('status')}: {pv.get('error', '')}")
    return "\n".join(lines)


def profile_tiny_addition(model, n_calls: int, top: int) -> str:
    """cProfile of pyvene_like's call on the tiny addition case, ranked by self time."""
    case = make_case_tiny_addition(model, None)
    fn = case["calls"]["pyvene_like"]
    for _ in range(50):
        fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n_calls):
        fn()
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime")
    total = st.total_tt
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append((tt, ct, nc, filename, line, func))
    rows.sort(reverse=True)
    out = [f"cProfile, {n_calls} pyvene_like calls (tiny addition), total {total * 1e3 / n_calls:.3f} ms/call "
           f"under the profiler", "", "top self time, all functions:",
           f"{'self us/call':>12} {'cum us/call':>12} {'calls/call':>10}  function"]
    for tt, ct, nc, filename, line, func in rows[:top]:
        where = filename.replace(str(ROOT) + "/", "")
        out.append(f"{tt * 1e6 / n_calls:12.1f} {ct * 1e6 / n_calls:12.1f} {nc / n_calls:10.1f}  {where}:{line}({func})")
    out += ["", "top self time, pyvene_like functions:"]
    own = [r for r in rows if "pyvene_like" in r[3]]
    own_total = sum(r[0] for r in own)
    out.append(f"(pyvene_like's own Python: {own_total * 1e6 / n_calls:.1f} us/call self time "
               f"under the profiler)")
    for tt, ct, nc, filename, line, func in own[:top]:
        where = filename.replace(str(ROOT) + "/", "")
        out.append(f"{tt * 1e6 / n_calls:12.1f} {ct * 1e6 / n_calls:12.1f} {nc / n_calls:10.1f}  {where}:{line}({func})")
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(markdown_table(cases))
    print(f"\nmachine: {result['machine']['cpu_model']}, torch {torch.__version__}, 1 thread; "
          f"pyvene: {result['machine']['pyvene']}; wall {result['wall_s']} s; wrote {out}")
    if profile is not None:
        print("\n" + profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
