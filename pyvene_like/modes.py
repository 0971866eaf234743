"""Train/eval flags that come back exactly as they were.

``module.train(was_training)`` restores only what the *parent's* flag said: a wrapper left
in its default ``training=True`` around a model in ``eval()`` turns the model (dropout on)
to training mode. Every module's own flag is recorded here instead and put back one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def training_flags(*modules: nn.Module) -> list[tuple[nn.Module, bool]]:
    """``(module, training)`` for every module under ``modules`` (each counted once)."""
    seen: set[int] = set()
    flags = []
    for root in modules:
        for m in root.modules():
            if id(m) not in seen:
                seen.add(id(m))
                flags.append((m, m.training))
    return flags


def restore_flags(flags: list[tuple[nn.Module, bool]]) -> None:
    """Put back what :func:`training_flags` recorded (``training`` set directly, no recursion)."""
    for m, training in flags:
        m.training = training


@contextmanager
def modes_restored(*modules: nn.Module) -> Iterator[None]:
    """Inside the block, switch modes freely; on the way out (an error included) every module
    under ``modules`` has its own train/eval flag back."""
    flags = training_flags(*modules)
    try:
        yield
    finally:
        restore_flags(flags)


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Every module under ``modules`` in eval mode inside the block, each flag restored after."""
    with modes_restored(*modules):
        for root in modules:
            root.eval()
        yield
