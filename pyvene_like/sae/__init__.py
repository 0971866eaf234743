"""Sparse autoencoders: one :class:`SAE` module, loaders for the published formats, and the
TransformerLens hook-name translator. The SAE interventions live in
:mod:`pyvene_like.sae.interventions`."""

from .formats import FORMATS, load_sae, sae_from_openai_state_dict, saelens_settings
from .hooks import hook_to_site, openai_location_to_site
from .sae import ACTIVATIONS, NORMALIZATIONS, SAE

_STEERING = ("collect_activations", "prompt_summaries", "score_features", "FeatureScores", "coverage",
             "reconstruction_error", "min_distances", "SAESwapIntervention")
_TRAIN = ("train_sae", "SAETrainResult")

__all__ = [
    "SAE",
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "FORMATS",
    "load_sae",
    "saelens_settings",
    "sae_from_openai_state_dict",
    "hook_to_site",
    "openai_location_to_site",
    *_STEERING,
    *_TRAIN,
]


def __getattr__(name):
    # steering imports the interventions (which import this package) and train imports
    # accelerate: both load on first use.
    import importlib

    if name in _STEERING or name == "steering":
        module = importlib.import_module(".steering", __name__)
        return module if name == "steering" else getattr(module, name)
    if name in _TRAIN or name == "train":
        module = importlib.import_module(".train", __name__)
        return module if name == "train" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
