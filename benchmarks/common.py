"""Machinery shared by the benchmark scripts (run.py, das.py, generation.py).

Only what the three do identically lives here: the optional pyvene import, the tiny/GPT-2
model builder, machine info, round-robin timing, the median/quartile summary, the leftover
hook check, ratio formatting, the profile rows and JSON writing. What each script measures
and how it checks correctness stays in the script.
"""

from __future__ import annotations

import cProfile
import ctypes
import gc
import hashlib
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch
import transformers

import pyvene_like as pvl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

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


def pyvene_error(e: Exception, status: str = "error", limit: int = 6) -> dict:
    """The entry recorded for pyvene when building or running it raised ``e`` (not timed)."""
    return {"status": status, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=limit)}


# -- models ---------------------------------------------------------------------------------
def build_gpt2(n_layer, n_embd, n_head, vocab, seed) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


# -- checks ---------------------------------------------------------------------------------
def leftover_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def abort_on_leftover_hooks(model, prefix: str, when: str) -> None:
    """Abort the run if any forward (pre-)hook is still registered on the model."""
    left = leftover_hooks(model)
    if left:
        sys.exit(f"{prefix}: {left} hooks left on the model after the {when}")


# -- timing ---------------------------------------------------------------------------------
def run_sampling_peak(fn, read) -> tuple[object, int]:
    """``fn()`` while ``read()`` (a memory figure in bytes) is sampled every 2 ms from a second
    thread: (fn's result, the largest reading, before, during and right after the call)."""
    peak = [read()]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], read())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out = fn()
    finally:
        stop.set()
        th.join()
    return out, max(peak[0], read())


def proc_memory() -> dict:
    """``RssAnon`` and ``RssFile`` of this process, in bytes (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if k in ("RssAnon", "RssFile")}


def trim_heap() -> None:
    """Hand freed heap back to the OS (glibc), so RssAnon counts what is held, not what an
    earlier part freed and the allocator kept."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the figures then include retained free memory
        pass


def peak_rss_anon(fn):
    """``fn()`` with RssAnon sampled every 2 ms: (its result, the peak RssAnon)."""
    return run_sampling_peak(fn, lambda: proc_memory()["RssAnon"])


def time_round_robin(calls: dict, rounds: int, inner: int, warmup_rounds: int) -> dict:
    """Per-contender samples (ms per call) of ``rounds`` timed rounds after ``warmup_rounds``.

    The starting contender rotates every round; each sample is the mean of ``inner`` calls.
    """
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


def spread(xs: list) -> dict:
    """Median, quartiles and minimum of one contender's samples (ms)."""
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median_ms": statistics.median(xs), "p25_ms": q[0], "p75_ms": q[2], "min_ms": min(xs)}


def paired_ratio_median(xs: list, ref: list) -> float:
    """Median of the per-round ratios ``x / ref`` (the same round's samples)."""
    return statistics.median(x / r for x, r in zip(xs, ref))


def summarize_vs_plain(samples: dict) -> dict:
    """Per contender: spread, ratio = median / plain's median, median of per-round ratios, n."""
    res = {}
    plain = samples["plain"]
    med_plain = statistics.median(plain)
    for name, xs in samples.items():
        res[name] = {
            **spread(xs),
            "ratio": statistics.median(xs) / med_plain,
            "paired_ratio_median": paired_ratio_median(xs, plain),
            "n": len(xs),
        }
    return res


def contender_results(contenders, stats: dict, pyvene: dict) -> dict:
    """Each contender's stats in ``contenders`` order; pyvene's status entry if it was not timed."""
    results = {}
    for name in contenders:
        if name in stats:
            results[name] = stats[name]
        elif name == "pyvene":
            results[name] = pyvene
    if "pyvene" in stats:
        results["pyvene"]["status"] = "ok"
    return results


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


def fmt_ratio(entry: dict, key: str = "ratio") -> str:
    """A table cell: the ratio, or why there is none (pyvene not installed, failed, ...)."""
    if key in entry:
        return f"{entry[key]:.2f}×"
    status = entry.get("status", "")
    return "not installed" if status == "not installed" else f"n/a ({status})"


def pyvene_problem(entry: dict, prefix: str) -> str | None:
    """The report line for a pyvene entry that failed, differed or cannot express the case."""
    if entry.get("status") in ("ok", "not installed"):
        return None
    return f"- {prefix}pyvene {entry.get('status')}: {entry.get('error', '')}"


def write_json(path, result: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return out


def machine_line(result: dict, out: Path, extra: str = "") -> str:
    """The one-line run summary printed after the table."""
    return (f"\nmachine: {result['machine']['cpu_model']}, torch {torch.__version__}, 1 thread; "
            f"pyvene: {result['machine']['pyvene']}; {extra}wall {result['wall_s']} s; wrote {out}")


# -- profiling ------------------------------------------------------------------------------
def profile_rows(fn, warmup: int, n: int) -> tuple[list, float]:
    """cProfile ``n`` calls of ``fn`` after ``warmup`` unprofiled ones.

    Returns rows ``(self s, cumulative s, calls, file, line, function)``, highest self time
    first, and the total time under the profiler.
    """
    for _ in range(warmup):
        fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    st = pstats.Stats(prof)
    rows = sorted(((tt, ct, nc, f, ln, func) for (f, ln, func), (_cc, nc, tt, ct, _c) in st.stats.items()),
                  reverse=True)
    return rows, st.total_tt


def profile_line(row, n: int) -> str:
    """One profile row, per call of the profiled function (us, us, calls)."""
    tt, ct, nc, f, ln, func = row
    return f"{tt * 1e6 / n:12.1f} {ct * 1e6 / n:12.1f} {nc / n:10.1f}  {f.replace(str(ROOT) + '/', '')}:{ln}({func})"


def own_rows(rows) -> list:
    """The rows of pyvene_like's own functions."""
    return [r for r in rows if "pyvene_like" in r[3]]
