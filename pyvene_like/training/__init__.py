"""Causal models, counterfactual data, and the loops that train and evaluate interventions."""

from .causal_model import CausalModel, hierarchical_equality
from .data import CounterfactualCollator, generate_counterfactual_dataset, generate_factual_dataset
from .evaluate import EvalResult, default_logits, default_loss, default_metric, evaluate
from .trainer import Trainer, TrainResult, train_interventions

__all__ = [
    "CausalModel",
    "CounterfactualCollator",
    "EvalResult",
    "TrainResult",
    "Trainer",
    "default_logits",
    "default_loss",
    "default_metric",
    "evaluate",
    "generate_counterfactual_dataset",
    "generate_factual_dataset",
    "hierarchical_equality",
    "train_interventions",
]
