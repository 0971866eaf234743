"""Intervention types. Each class registers itself under a name usable in configs."""

from .base import Intervention
from .basic import (
    AdditionIntervention,
    CollectIntervention,
    LambdaIntervention,
    NoiseIntervention,
    SkipIntervention,
    SubtractionIntervention,
    VanillaIntervention,
    ZeroIntervention,
)
from .masked import SigmoidMaskIntervention, SigmoidMaskRotatedSpaceIntervention
from .rotated import (
    BoundlessRotatedSpaceIntervention,
    LowRankRotatedSpaceIntervention,
    RotatedSpaceIntervention,
    RotateLayer,
    TrainableIntervention,
)

__all__ = [
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
    "RotateLayer",
]
