"""Type aliases for the public signatures (what each argument accepts, in one place).

They are plain aliases for readers and type checkers; the accepted forms are checked at run
time by :mod:`pyvene_like.validation` and the engine, which name what they accept in their errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

#: A model input: a tensor passed positionally, or keyword arguments of the model's forward.
Inputs = torch.Tensor | Mapping[str, Any]
#: Unit locations of a call: ``{"sources->base": (source_units, base_units)}``, ``{"base": units}``,
#: a bare int/list broadcast to every intervention, or ``None`` (every unit where that means one).
UnitLocations = Mapping[str, Any] | Sequence[Any] | int | None
#: Subspaces of a call: one list per intervention (per example), a flat list for all, or ``None``.
Subspaces = Sequence[Any] | None
#: An intervention's subspace partition: ``[start, end)`` ranges of dims, one per subspace id.
Partition = Sequence[Sequence[int]] | None
#: A random seed or an explicit generator.
Seed = int | torch.Generator | None
#: A filesystem path.
PathLike = str | os.PathLike
#: Where tensors live.
Device = str | torch.device | int

__all__ = ["Inputs", "UnitLocations", "Subspaces", "Partition", "Seed", "PathLike", "Device"]
