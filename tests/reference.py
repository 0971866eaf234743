"""Hand-written torch hooks: the ground truth every intervention is checked against."""

from __future__ import annotations


def _main(x):
    return x[0] if isinstance(x, tuple) else x


def capture(model, module, io, inputs):
    """Run ``inputs`` and return a clone of the module's main input or output tensor."""
    return capture_many(model, {"x": (module, io)}, inputs)["x"]


def capture_many(model, targets, inputs):
    """One run of ``inputs``; ``targets`` is ``{key: (module, "input" | "output")}``; returns
    ``{key: clone of that module's main input or output}`` (its first call in the run)."""
    box = {}
    hooks = []

    def keep(key, t):  # returns None: the hook must not replace what it reads
        if key not in box:
            box[key] = t.detach().clone()

    def post(key):
        return lambda m, a, o: keep(key, _main(o))

    def pre(key):
        return lambda m, a, k: keep(key, a[0] if a else k["hidden_states"])

    try:
        for key, (module, io) in targets.items():
            if io == "output":
                hooks.append(module.register_forward_hook(post(key)))
            else:
                hooks.append(module.register_forward_pre_hook(pre(key), with_kwargs=True))
        model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return box


def run_with_edit(model, module, io, inputs, edit):
    """Run ``inputs`` with ``edit(tensor) -> tensor`` applied to the module's input/output."""
    if io == "output":
        def post(m, a, o):
            if isinstance(o, tuple):
                return (edit(o[0].clone()),) + o[1:]
            return edit(o.clone())
        h = module.register_forward_hook(post)
    else:
        def pre(m, a, k):
            if a:
                return (edit(a[0].clone()),) + a[1:], k
            k = dict(k)
            k["hidden_states"] = edit(k["hidden_states"].clone())
            return a, k
        h = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        return model(**inputs)
    finally:
        h.remove()
