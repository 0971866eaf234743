"""Tutorials run the way CI runs them: CI-sized with TUTORIAL_SMALL=1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyvene_like as pv

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    env = dict(os.environ, TUTORIAL_SMALL="1", TUTORIAL_OUTPUT_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    if path.stem == "01_quick_tour":
        assert "equals a hand-written hook: True" in proc.stdout
    if path.stem == "02_das_equality":
        _check_das(json.loads((tmp_path / "02_das_equality" / "results.json").read_text()), tmp_path)
    if path.stem == "03_sae_steering":
        _check_steering(json.loads((tmp_path / "03_sae_steering" / "results.json").read_text()), tmp_path)
    if path.stem == "04_codebook_topics":
        _check_codebook_topics(json.loads((tmp_path / "04_codebook_topics" / "results.json").read_text()), tmp_path)
    if path.stem == "05_heads_and_probes":
        _check_heads_and_probes(json.loads((tmp_path / "05_heads_and_probes" / "results.json").read_text()), tmp_path)
    if path.stem == "06_causal_tracing":
        _check_causal_tracing(json.loads((tmp_path / "06_causal_tracing" / "results.json").read_text()), tmp_path)


def _check_das(results, tmp_path):
    """The CI-sized DAS run still shows the result at a layer of mixed units: with k chosen on
    the validation set, DAS aligns WX and YZ (>= 0.95), the units grouped by the input pair
    they depend on stay at least 0.1 lower, and doing nothing scores about chance."""
    assert results["small"] and (tmp_path / "02_das_equality" / "iia.png").stat().st_size > 0
    recipe = results["recipe"]
    assert recipe["n_val"] and results["layer"] >= 1  # the main setting is past the L1-sparse first layer
    for run in results["runs"]:
        assert run["factual_accuracy"] >= 0.99 and run["sources_cached"]
        assert run["mixed_units"] >= 0.4, run["mixed_units"]  # most units read both pairs
        # the selection is the best validation score, and "both" is never the whole layer
        val = run["validation"]["das"]
        chosen = max(recipe["k_candidates"], key=lambda k: val[f"k={k}"]["WX"] + val[f"k={k}"]["YZ"])
        assert run["selected"]["das_k"] == chosen and 2 * chosen < recipe["hidden"]
        das, base = run["das"], run["baselines"]
        for name in ("WX", "YZ"):
            assert das[name] >= 0.95, run
            assert base["grouped_neurons"][name] <= das[name] - 0.1, run
            assert base["neuron_halves"][name] <= das[name] - 0.1, run
            assert 0.4 <= base["do_nothing"][name] <= 0.6, run
    for key in ("grouped_neurons", "do_nothing"):
        part = results["baselines"][key]
        assert part["per_seed"] == [r["baselines"][key] for r in results["runs"]]
        wx = [r["WX"] for r in part["per_seed"]]
        assert part["summary"]["WX"]["mean"] == pytest.approx(sum(wx) / len(wx))
    assert all(results["checks"].values()), results["checks"]


def _check_codebook_topics(results, tmp_path):
    """The CI-sized codebook run (one seed) still steers, counted on fluent generations only: with
    the setting chosen on validation prompts, forcing each topic's codes raises the rate of test
    generations that name the topic and are valid under the story grammar, without costing more
    fluency than the budget. Thresholds from the CI-sized run of seed 0 (deterministic on the pinned
    torch): unsteered fluent 0.80, steered 0.74-0.85; rises +3, +23, +57, +28 points (mean +28);
    no steering scores 0 and the earlier recipe (no titles, every token) -3..+19, mean under +10."""
    out = tmp_path / "04_codebook_topics"
    assert results["small"] and (out / "steering.png").stat().st_size > 0 and (out / "sweep.png").stat().st_size > 0
    assert (out / "codebooks" / "codebooks.safetensors").is_file()  # what the browser app reads
    assert (out / "model" / "config.json").is_file() and (out / "records").is_dir()
    recipe, seeds, topics = results["recipe"], results["seeds"], list(results["table"])
    assert not set(recipe["val_prompts"]) & set(recipe["prompts"])  # chosen on other prompts
    assert len(recipe["prompts"]) * recipe["samples"] >= 100
    summary = results["summary"]
    for run in results["per_seed"]:
        history = run["training"]["history"]
        assert history[-1]["lm_loss"] < 0.5 * history[0]["lm_loss"]
        for topic in topics:
            assert run["codes"][topic], topic
            val = run["validation"][topic]
            kept = [r for r in val["settings"] if all(r[k] == v for k, v in run["chosen"][topic].items())]
            assert len(kept) == 1, (topic, run["chosen"][topic])
            in_budget = [r for r in val["settings"]
                         if r["fluent_rate"] >= val["unsteered"]["fluent_rate"] - recipe["max_fluency_drop"]]
            assert kept[0]["fluent_on_topic_rate"] == max(r["fluent_on_topic_rate"] for r in in_budget or val["settings"])
    for cond in results["conditions"]:
        for metric in ("fluent_rate", "fluent_on_topic_rate", "on_topic_rate", "perplexity"):
            entry = summary[cond][metric]
            assert len(entry["per_seed"]) == len(seeds) and entry["sd"] is not None
            for topic in topics:  # the summary holds the per-seed numbers of each topic
                assert entry["per_topic"][topic]["per_seed"] == [r["test"][cond][topic][metric]
                                                                 for r in results["per_seed"]]
    for topic, row in results["table"].items():
        assert row["rise"]["per_seed"] == [s - b for b, s in zip(row["baseline"]["per_seed"],
                                                                 row["steered"]["per_seed"])]
        assert row["steered"] == summary["codes"]["fluent_on_topic_rate"]["per_topic"][topic]
    fluent = {c: summary[c]["fluent_rate"]["mean"] for c in ("unsteered", "codes")}
    assert fluent["unsteered"] >= 0.7, fluent  # the grammar passes most unsteered stories
    assert fluent["codes"] >= fluent["unsteered"] - 0.15, fluent  # steering keeps the text fluent
    rises = [row["rise"]["mean"] for row in results["table"].values()]
    assert sum(rises) / len(rises) >= 0.15, results["table"]
    assert sum(r > 0 for r in rises) >= len(rises) - 1, results["table"]  # every topic but at most one rises


def _check_heads_and_probes(results, tmp_path):
    """Heads from "it" to the noun are found on the real MiniLM; a probe on the best one reads
    the noun's identity from held-out sentences and templates far above shuffled labels; the
    controls are the unselected heads of the same layers; and ablating the found heads at "it"
    costs a probe on the last layer's output far more than ablating as many random heads of
    the same layers."""
    assert results["small"] and (tmp_path / "05_heads_and_probes" / "sweep.png").stat().st_size > 0
    assert results["heads"] and results["best"] == results["heads"][0]
    rows = results["rows"]
    best, shuffled = rows[results["best"]]["summary"], rows[f"{results['best']} shuffled labels"]["summary"]
    for split in ("held_out_sentences", "held_out_templates"):
        assert best[split]["mean"] >= 0.7, (split, best)
        assert shuffled[split]["mean"] <= results["chance"] + 0.1, (split, shuffled)
        assert best[split]["mean"] >= shuffled[split]["mean"] + 0.5, (split, best, shuffled)
    controls = results["same_layer_controls"]
    assert sorted(int(layer) for layer in controls) == results["layers"]
    for layer, c in controls.items():
        assert c["found"] and not set(c["found"]) & set(c["controls"])
        assert len(c["found"]) + len(c["controls"]) == 12  # MiniLM's heads per layer
        assert all(h.startswith(f"L{layer}H") for h in c["controls"])
    causal = results["causal"]
    assert causal["clean"]["summary"]["mean"] >= 0.8, causal["clean"]
    for kind in ("mean", "zero"):
        c = causal[kind]
        found_drop = c["found"]["summary"]["drop"]["mean"]
        assert len(c["random"]["per_draw"]) == results["n_random"]
        assert found_drop >= 0.2 and c["excess_drop"] >= 0.15, (kind, c["found"], c["random"]["summary"])
        assert c["random_at_least_found"] == 0, (kind, c["random"]["summary"])


def _check_steering(results, tmp_path):
    """The CI-sized SAE steering run, counted on fluent generations only: over the seeds, steering
    with the paper's distance scores (add, the setting chosen on validation prompts) raises the
    rate of test generations that are sea and valid under the corpus grammar, while fluency
    stays within 15 points of unsteered; the SAE's plain reconstruction (swap's control) moves
    nothing; the strongest setting of the sweep breaks the text, so the gate matters. Measured on
    CI-sized runs with seeds (0, 1), (2, 3), (4, 5): the rise is +0.21, +0.25, +0.19 and fluency
    moves -0.03, -0.01, -0.09; no steering (rise 0) and steering every token at scale 8 (fluent
    0.02-0.03) fail."""
    out = tmp_path / "03_sae_steering"
    assert results["small"] and (out / "rates.png").stat().st_size > 0 and (out / "sweep.png").stat().st_size > 0
    assert len(results["seeds"]) >= 2 and not set(results["val_prompts"]) & set(results["test_prompts"])
    s = results["summary"]
    assert set(results["conditions"]) == {"unsteered", "reconstruction", "swap_distance", "add_distance",
                                          "swap_difference", "add_difference"}
    for c in results["conditions"]:
        assert {"fluent_on_topic_rate", "fluent_rate"} <= set(s[c]), c
        assert len(s[c]["fluent_rate"]["per_seed"]) == len(results["seeds"])
    base = s["unsteered"]
    assert base["fluent_rate"]["mean"] >= 0.75, base  # the grammar accepts the model's own text
    assert abs(s["reconstruction"]["fluent_on_topic_rate"]["mean"] - base["fluent_on_topic_rate"]["mean"]) <= 0.1
    add = s["add_distance"]
    assert add["fluent_on_topic_rate"]["mean"] >= base["fluent_on_topic_rate"]["mean"] + 0.1, (add, base)
    assert add["fluent_rate"]["mean"] >= base["fluent_rate"]["mean"] - 0.15, (add, base)
    for run in results["per_seed"]:
        for m, setting in run["chosen"].items():  # chosen from the validation grid
            assert any(r["positions"] == setting["positions"] and r["strength"] == setting["strength"]
                       for r in run["validation"][m]), (m, setting)
        u = run["uncertainty"]["distance"]
        assert 0 < u["coverage"] <= 1 and 0 <= u["reconstruction_error"] < 0.5
    strongest = max((r for r in results["sweep"]["add_distance"] if r["positions"] == "all"),
                    key=lambda r: r["strength"])
    assert strongest["fluent_rate"] <= results["sweep"]["unsteered"]["fluent_rate"] - 0.3, strongest
    # what `pyvene-like serve` reads: the SAE loads back, the model folder has its tokenizer
    sae = pv.sae.load_sae(out / "app" / "sae")
    assert sae.hook_name and (out / "app" / "model" / "tokenizer.json").is_file()
    assert (out / "app" / "sea_sentences.txt").read_text().strip()


def _check_causal_tracing(results, tmp_path):
    """The CI-sized trace shows the known answer on the real MiniLM: with the noun noised, the
    noun's own column restores "it" in the early layers, the "it" column in the last, and other
    tokens little; attribution patching ranks the cells like the exact sweep."""
    out = tmp_path / "06_causal_tracing"
    for name in ("trace.png", "heads.png", "attribution.png"):
        assert (out / name).stat().st_size > 0, name
    trace, noun, it = results["trace"], results["noun_position"], results["it_position"]
    assert trace[0][noun] >= 0.8 and trace[-1][it] >= 0.99
    others = [v for p, v in enumerate(trace[0]) if p not in (noun, it)]
    assert max(others) <= 0.2, trace[0]
    assert results["heads_top"][0]["normalized"] >= 0.1
    for name in ("block_output", "heads"):
        assert results["attribution"][name]["spearman"] >= 0.8, results["attribution"]
    assert results["hand_hook_max_diff"] <= 1e-5
