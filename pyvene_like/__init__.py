"""pyvene_like: declarative interventions on the internals of any PyTorch / HuggingFace model."""

from . import analysis as analysis
from . import codebook as codebook
from . import interventions as interventions
from . import sae as sae
from .codebook import CodebookIntervention
from .config import IntervenableConfig, RepresentationConfig
from .errors import (
    ConfigError,
    LoadError,
    LocationError,
    PyveneLikeError,
    PyveneLikeWarning,
    ShapeError,
    SiteError,
)
from .interventions import (
    AdditionIntervention,
    BoundlessRotatedSpaceIntervention,
    CollectIntervention,
    Intervention,
    LambdaIntervention,
    LowRankRotatedSpaceIntervention,
    NoiseIntervention,
    RotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
    SkipIntervention,
    SubtractionIntervention,
    TrainableIntervention,
    VanillaIntervention,
    ZeroIntervention,
)
from .model import IntervenableModel, IntervenableModelOutput
from .registry import get_intervention_class, register_intervention, registered_interventions
from .sae import (
    SAE,
    SAEAblateIntervention,
    SAEInterchangeIntervention,
    SAEIntervention,
    SAESteerIntervention,
    SAESwapIntervention,
    load_sae,
)
from .sites import COMPONENTS
from .version import __version__

_TRAINING_NAMES = (
    "CausalModel",
    "CounterfactualCollator",
    "EvalResult",
    "TrainResult",
    "Trainer",
    "evaluate",
    "generate_counterfactual_dataset",
    "generate_factual_dataset",
    "hierarchical_equality",
    "train_interventions",
)

__all__ = [
    "__version__",
    "IntervenableConfig",
    "RepresentationConfig",
    "IntervenableModel",
    "IntervenableModelOutput",
    "Intervention",
    "VanillaIntervention",
    "AdditionIntervention",
    "SubtractionIntervention",
    "ZeroIntervention",
    "CollectIntervention",
    "SkipIntervention",
    "NoiseIntervention",
    "LambdaIntervention",
    "RotatedSpaceIntervention",
    "LowRankRotatedSpaceIntervention",
    "BoundlessRotatedSpaceIntervention",
    "SigmoidMaskIntervention",
    "SigmoidMaskRotatedSpaceIntervention",
    "TrainableIntervention",
    "CodebookIntervention",
    "codebook",
    "analysis",
    "SAEIntervention",
    "SAEInterchangeIntervention",
    "SAESteerIntervention",
    "SAEAblateIntervention",
    "SAESwapIntervention",
    "SAE",
    "load_sae",
    "sae",
    "register_intervention",
    "get_intervention_class",
    "registered_interventions",
    "COMPONENTS",
    "PyveneLikeError",
    "ConfigError",
    "SiteError",
    "LocationError",
    "ShapeError",
    "LoadError",
    "PyveneLikeWarning",
    "interventions",
    "training",
    *_TRAINING_NAMES,
]


def __getattr__(name):
    # The training stack pulls in accelerate and datasets: imported on first use only.
    if name == "training" or name in _TRAINING_NAMES:
        import importlib

        training = importlib.import_module(".training", __name__)
        return training if name == "training" else getattr(training, name)
    raise AttributeError(f"module 'pyvene_like' has no attribute {name!r}")
