"""Reading models: token positions, attention patterns and head finding, activation datasets, probes,
head ablation, patching sweeps (causal tracing), attribution patching, and the fluency of
generations (corpus grammar, perplexity, steering rates gated by fluency)."""

from ..exports import public_names
from .ablation import ablate_heads, head_means
from .attention import (
    AttentionHead,
    HeadScores,
    attention_patterns,
    eager_attention,
    find_heads,
    head_scores,
    heads_above,
)
from .collect import ActivationSite, activation_columns, activation_metadata, collect_activations
from .fluency import CorpusGrammar, TextCheck, gated_rates, generated_nll, grammar_rates, perplexity
from .patching import (
    GaussianNoise,
    PatchingResult,
    attribution_patching,
    compare_attribution,
    kl_to,
    logit_diff,
    patching_sweep,
    plot_attribution_vs_exact,
    plot_patching,
    token_prob,
)
from .probes import ProbeResult, evaluate_probe, make_probe, plot_sweep, probe_sweep, train_probe
from .tokens import TokenFinder, TokenSpan, find_token_positions

__all__ = public_names(globals(), __name__)
