"""Reading models: token positions, attention patterns and head finding, activation datasets, probes."""

from ..exports import public_names
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
from .probes import ProbeResult, evaluate_probe, make_probe, plot_sweep, probe_sweep, train_probe
from .tokens import TokenFinder, TokenSpan, find_token_positions

__all__ = public_names(globals(), __name__)
