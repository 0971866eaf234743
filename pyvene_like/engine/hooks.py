"""Installing and removing hooks. Hooks only live inside :class:`HookSet`'s ``with`` block."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class StopForward(Exception):
    """Raised by the last collect hook of a source pass: the rest of the model is not needed."""


class HookSet:
    """A context manager owning hook handles; every handle is removed in ``__exit__``.

    Only the handles created here are removed, so hooks the user registered on the same
    modules are never touched.
    """

    __slots__ = ("handles",)

    def __init__(self):
        self.handles = []

    def pre(self, module: nn.Module, fn) -> None:
        self.handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def post(self, module: nn.Module, fn) -> None:
        self.handles.append(module.register_forward_hook(fn, with_kwargs=True))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


def find_input(args: tuple, kwargs: dict):
    """Locate the module's main input tensor: ``(tensor, position or keyword)``."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0], 0
    hs = kwargs.get("hidden_states")
    if isinstance(hs, torch.Tensor):
        return hs, "hidden_states"
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            return a, i
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            return v, k
    return None, None


def replace_input(args: tuple, kwargs: dict, where, value):
    if isinstance(where, int):
        args = args[:where] + (value,) + args[where + 1 :]
    else:
        kwargs = dict(kwargs)
        kwargs[where] = value
    return args, kwargs


def output_tensor(output):
    """The main tensor of a module's output (the tensor, or the first element)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping) and output:
        first = next(iter(output.values()))
        if isinstance(first, torch.Tensor):
            return first
    return None


def replace_output(output, value):
    if isinstance(output, torch.Tensor):
        return value
    if isinstance(output, tuple):
        rest = output[1:]
        if hasattr(output, "_fields"):  # namedtuple
            return type(output)(value, *rest)
        return (value, *rest)
    if isinstance(output, list):
        return [value, *output[1:]]
    key = next(iter(output.keys()))
    output[key] = value
    return output
