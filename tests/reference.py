"""Hand-written torch hooks: the ground truth every intervention is checked against."""

from __future__ import annotations


def _main(x):
    return x[0] if isinstance(x, tuple) else x


def capture(model, module, io, inputs):
    """Run ``inputs`` and return a clone of the module's main input or output tensor."""
    box = {}
    if io == "output":
        def post(m, a, o):
            box.setdefault("x", _main(o).detach().clone())
        h = module.register_forward_hook(post)
    else:
        def pre(m, a, k):
            t = a[0] if a else k["hidden_states"]
            box.setdefault("x", t.detach().clone())
        h = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        model(**inputs)
    finally:
        h.remove()
    return box["x"]


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
