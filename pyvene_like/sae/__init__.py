"""Sparse autoencoders: one :class:`SAE` module, loaders for the published formats (a registry:
one :func:`register_sae_format` loader per format), the TransformerLens hook-name translator,
the SAE interventions (:mod:`pyvene_like.sae.interventions`) and steering toward a target
(:mod:`pyvene_like.sae.steering`, which reads activations with
:func:`pyvene_like.analysis.collect_activations`: this package may import ``analysis``, never the
other way round).

Only training (:func:`train_sae`) loads on first use, since it imports accelerate.
"""

from .formats import (
    FORMATS,
    SAE_FORMATS,
    LoadOptions,
    SAEFormat,
    SAESource,
    load_sae,
    register_sae_format,
    sae_from_openai_state_dict,
    saelens_settings,
)
from .hooks import hook_to_site, openai_location_to_site
from .interventions import (
    SAEAblateIntervention,
    SAEInterchangeIntervention,
    SAEIntervention,
    SAESteerIntervention,
    SAESwapIntervention,
)
from .sae import ACTIVATIONS, NORMALIZATIONS, SAE
from .steering import (
    FeatureScores,
    collect_activations,
    coverage,
    min_distances,
    prompt_summaries,
    reconstruction_error,
    score_features,
)

_TRAIN = ("train_sae", "SAETrainResult")

__all__ = [
    "SAE",
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "FORMATS",
    "SAE_FORMATS",
    "SAEFormat",
    "SAESource",
    "LoadOptions",
    "register_sae_format",
    "load_sae",
    "saelens_settings",
    "sae_from_openai_state_dict",
    "hook_to_site",
    "openai_location_to_site",
    "SAEIntervention",
    "SAEInterchangeIntervention",
    "SAESteerIntervention",
    "SAEAblateIntervention",
    "SAESwapIntervention",
    "collect_activations",
    "prompt_summaries",
    "score_features",
    "FeatureScores",
    "coverage",
    "reconstruction_error",
    "min_distances",
    *_TRAIN,
]


def __getattr__(name):
    # Training imports accelerate (slow to import, not needed to load or apply an SAE): loaded on
    # first use. This is the only lazy name here; it dodges no import cycle.
    if name in _TRAIN or name == "train":
        import importlib

        module = importlib.import_module(".train", __name__)
        return module if name == "train" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
