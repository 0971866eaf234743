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


# transformers (>= 5) installs inert output-capturing forward hooks on a model the first time it
# is called with output_attentions / output_hidden_states, for good, and marks the model with
# this attribute; a library call that asks for attentions takes them off again.
_CAPTURE_MARK = "_output_capturing_hooks_installed"
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


@contextmanager
def hooks_restored(model: nn.Module) -> Iterator[None]:
    """On the way out (an error included) remove every forward hook added inside the block to a
    module of ``model`` and the transformers mark that says they are installed, so a model
    leaves a call with exactly the hooks it came with (the user's own are never touched)."""
    before = {id(m): (set(m._forward_hooks), set(m._forward_pre_hooks), hasattr(m, _CAPTURE_MARK))
              for m in model.modules()}
    try:
        yield
    finally:
        for m in model.modules():
            hooks, pre, marked = before.get(id(m), (set(), set(), False))
            for key in [k for k in m._forward_hooks if k not in hooks]:
                for name in _HOOK_DICTS:
                    getattr(m, name, {}).pop(key, None)
            for key in [k for k in m._forward_pre_hooks if k not in pre]:
                m._forward_pre_hooks.pop(key, None)
                getattr(m, "_forward_pre_hooks_with_kwargs", {}).pop(key, None)
            if not marked and _CAPTURE_MARK in vars(m):
                delattr(m, _CAPTURE_MARK)
