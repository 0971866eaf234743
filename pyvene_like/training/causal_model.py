"""Causal models: the high-level hypotheses DAS aligns with a network, run on whole batches.

A :class:`CausalModel` is a DAG of named variables. Input variables (no parents) are sampled;
every other variable is a function of its parents. Everything is batched: a function receives
its parents' values as tensors with a leading batch dimension and returns one, so a million
counterfactual examples cost a handful of tensor operations, not a million Python calls.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Mapping, Sequence

import torch

from ..errors import ConfigError, ShapeError
from ..types import Seed
from ..validation import check_int, check_number, check_positive_int

Sampler = Callable[[int, torch.Generator], torch.Tensor]


def _generator(seed: Seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if seed is not None:
        # int(seed) truncated 1.5 and read True, b'1' or a one-element tensor as seeds
        check_int(seed, "seed (None, an int or a torch.Generator)", minimum=0, maximum=2**64 - 1)
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


class CausalModel:
    """A batched structural causal model.

    Args:
        variables: variable names, in any order.
        parents: ``{variable: [parent, ...]}``; variables missing here, or with an empty list,
            are inputs.
        functions: ``{variable: fn(*parent_values) -> values}`` for every non-input variable;
            each argument is a tensor ``[batch, ...]`` in the order of ``parents[variable]``.
        values: for each input variable, what it ranges over: a list or tensor of possible
            values (``[k]`` or ``[k, ...]``, sampled uniformly), or a sampler
            ``fn(n, generator) -> tensor [n, ...]``. Optional when ``sampler`` is given.
        sampler: optional joint sampler of all inputs, ``fn(n, generator) -> {input: tensor}``,
            for distributions the variables cannot express one at a time (e.g. balanced
            equalities).
        outputs: the output variable(s); default: the variables nothing depends on.

    Example (hierarchical equality, see :func:`hierarchical_equality`)::

        CausalModel(
            variables=["W", "X", "Y", "Z", "WX", "YZ", "O"],
            parents={"WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"]},
            functions={"WX": lambda w, x: (w == x).all(-1), "YZ": ..., "O": lambda a, b: a == b},
            values={v: lambda n, g: torch.rand(n, 4, generator=g) for v in "WXYZ"},
        )
    """

    def __new__(cls, *args, **kwargs):
        # pyvene's form, CausalModel(variables, values, parents, functions, timesteps=...),
        # builds the per-example model (one dict of values per run) that pyvene code expects.
        if cls is CausalModel and _pyvene_form(args, kwargs):
            return super().__new__(ExampleCausalModel)
        return super().__new__(cls)

    def __init__(
        self,
        variables: Sequence[str],
        parents: Mapping[str, Sequence[str]] | None = None,
        functions: Mapping[str, Callable] | None = None,
        values: Mapping[str, object] | None = None,
        sampler: Callable[[int, torch.Generator], Mapping[str, torch.Tensor]] | None = None,
        outputs: Sequence[str] | str | None = None,
    ):
        variables = list(variables)
        if not variables or not all(isinstance(v, str) for v in variables):
            raise ConfigError(f"variables: expected a non-empty list of names, got {variables!r}")
        dupes = sorted({v for v in variables if variables.count(v) > 1})
        if dupes:
            raise ConfigError(f"variables: names must be unique, repeated: {dupes}")
        known = set(variables)
        parents = {k: list(v) for k, v in (parents or {}).items()}
        functions = dict(functions or {})
        values = dict(values or {})
        for label, mapping in (("parents", parents), ("functions", functions), ("values", values)):
            unknown = sorted(set(mapping) - known)
            if unknown:
                raise ConfigError(f"{label}: {unknown} are not among variables {variables}")
        for var, ps in parents.items():
            bad = [p for p in ps if p not in known]
            if bad:
                raise ConfigError(f"parents[{var!r}]: {bad} are not among variables {variables}")
        self.variables = variables
        self.parents = {v: parents.get(v, []) for v in variables}
        self.inputs = [v for v in variables if not self.parents[v]]
        self.children = {v: [c for c in variables if v in self.parents[c]] for v in variables}
        self.order = self._topological_order()
        for v in variables:
            if self.parents[v] and not callable(functions.get(v)):
                raise ConfigError(
                    f"functions[{v!r}]: variable {v!r} has parents {self.parents[v]} and needs a "
                    f"batched function of them"
                )
        self.functions = functions
        self.sampler = sampler
        self.samplers: dict[str, Sampler] = {}
        for v in self.inputs:
            spec = values.get(v)
            if spec is None:
                if sampler is None:
                    raise ConfigError(
                        f"values[{v!r}]: input variable {v!r} needs possible values (a list, a tensor "
                        f"or a sampler fn(n, generator)), or give a joint sampler="
                    )
                continue
            self.samplers[v] = self._as_sampler(v, spec)
        if outputs is None:
            outputs = [v for v in variables if not self.children[v] and self.parents[v]]
        elif isinstance(outputs, str):
            outputs = [outputs]
        bad = [o for o in outputs if o not in known]
        if bad or not outputs:
            raise ConfigError(f"outputs: {bad or outputs!r} must name variables among {variables}")
        self.outputs = list(outputs)

    # -- structure ---------------------------------------------------------------------------
    def _topological_order(self) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(v, path):
            if state.get(v) == 2:
                return
            if state.get(v) == 1:
                raise ConfigError(f"parents: the graph has a cycle through {' -> '.join(path + [v])}")
            state[v] = 1
            for p in self.parents[v]:
                visit(p, path + [v])
            state[v] = 2
            order.append(v)

        for v in self.variables:
            visit(v, [])
        return order

    def descendants(self, var: str) -> set[str]:
        out, todo = set(), list(self.children[var])
        while todo:
            c = todo.pop()
            if c not in out:
                out.add(c)
                todo.extend(self.children[c])
        return out

    @staticmethod
    def _as_sampler(var, spec) -> Sampler:
        if callable(spec):
            return spec
        table = torch.as_tensor(spec)
        if table.dim() == 0 or table.shape[0] == 0:
            raise ConfigError(f"values[{var!r}]: expected a non-empty list of possible values, got {spec!r}")

        def sample(n, g):
            return table[torch.randint(0, table.shape[0], (n,), generator=g)]

        return sample

    def _check(self, var: str, label: str) -> None:
        if var not in self.parents:
            raise ConfigError(f"{label}: {var!r} is not a variable of this model; variables: {self.variables}")

    # -- running -----------------------------------------------------------------------------
    def sample_inputs(self, n: int, seed: Seed = None) -> dict[str, torch.Tensor]:
        """``n`` input settings, ``{input variable: tensor [n, ...]}``."""
        g = _generator(seed)
        out = {}
        if self.sampler is not None:
            out = dict(self.sampler(n, g))
        for v in self.inputs:
            if v not in out:
                out[v] = self.samplers[v](n, g)
        return out

    def run_forward(self, inputs: Mapping[str, torch.Tensor],
                    interventions: Mapping[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] | None = None,
                    ) -> dict[str, torch.Tensor]:
        """Every variable's value, computed in topological order on a batch.

        ``interventions``: ``{variable: values}`` fixes a variable to the given values (its
        descendants are recomputed from them); ``{variable: (values, mask)}`` fixes it only
        where the boolean ``mask [batch]`` is true.
        """
        missing = [v for v in self.inputs if v not in inputs]
        if missing:
            raise ConfigError(f"inputs: missing input variable(s) {missing}; inputs are {self.inputs}")
        fixed = {}
        for var, spec in (interventions or {}).items():
            self._check(var, "interventions")
            fixed[var] = spec if isinstance(spec, tuple) else (spec, None)
        bsz = None
        setting: dict[str, torch.Tensor] = {}
        for v in self.order:
            if self.parents[v]:
                val = self.functions[v](*(setting[p] for p in self.parents[v]))
                val = torch.as_tensor(val)
            else:
                val = torch.as_tensor(inputs[v])
            if bsz is None:
                bsz = val.shape[0] if val.dim() else None
            if val.dim() == 0 or val.shape[0] != bsz:
                raise ShapeError(
                    f"{'functions' if self.parents[v] else 'inputs'}[{v!r}]: expected a batch of {bsz} "
                    f"values (a tensor [batch, ...]), got shape {tuple(val.shape)}"
                )
            if v in fixed:
                new, mask = fixed[v]
                new = torch.as_tensor(new).to(val.dtype)
                if mask is None:
                    val = new.expand_as(val)
                else:
                    m = torch.as_tensor(mask, dtype=torch.bool).reshape(-1, *([1] * (val.dim() - 1)))
                    val = torch.where(m, new, val)
            setting[v] = val
        return setting

    def run_interchange(self, base: Mapping[str, torch.Tensor], sources: Mapping[str, Mapping]) -> dict:
        """Base run with each variable in ``sources`` set to its value on that source input.

        ``sources``: ``{variable: source input setting}`` (one source per variable).
        """
        fixed = {}
        for var, src in sources.items():
            self._check(var, "sources")
            fixed[var] = self.run_forward(src)[var]
        return self.run_forward(base, fixed)

    # -- encodings ---------------------------------------------------------------------------
    def encode_inputs(self, setting: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Default input encoding: the input variables, flattened and concatenated, as float."""
        parts = [torch.as_tensor(setting[v]).reshape(len(setting[v]), -1).float() for v in self.inputs]
        return torch.cat(parts, dim=-1)

    def encode_output(self, setting: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Default label encoding: the (single) output variable as a class id (bools -> 0/1)."""
        if len(self.outputs) != 1:
            raise ConfigError(
                f"outputs: the default label encoding needs one output variable, got {self.outputs}; "
                f"pass label_encoder="
            )
        y = torch.as_tensor(setting[self.outputs[0]])
        return y.long() if y.dtype == torch.bool or not y.is_floating_point() else y


def _pyvene_form(args, kwargs) -> bool:
    """Whether a ``CausalModel(...)`` call uses pyvene's argument order and per-example functions.

    pyvene's signature is ``(variables, values, parents, functions, timesteps, equiv_classes,
    pos)``: its third positional argument maps variables to parent *lists*, where ours takes
    functions; and pyvene gives a function (the default value) for every input variable too.
    """
    if any(k in kwargs for k in ("timesteps", "equiv_classes", "pos")) or len(args) > 6:
        return True
    third = args[2] if len(args) > 2 else None
    if isinstance(third, Mapping) and third and all(isinstance(v, (list, tuple)) for v in third.values()):
        return True
    parents = kwargs.get("parents", args[1] if len(args) > 1 else None)
    functions = kwargs.get("functions", args[2] if len(args) > 2 else None)
    variables = kwargs.get("variables", args[0] if args else None)
    if isinstance(parents, Mapping) and isinstance(functions, Mapping) and variables is not None:
        inputs = [v for v in variables if not parents.get(v)]
        return bool(inputs) and all(v in functions for v in inputs)
    return False


class ExampleCausalModel(CausalModel):
    """pyvene's per-example causal model: ``CausalModel(variables, values, parents, functions)``.

    Every variable has a list of possible ``values`` and a plain function of its parents' values
    (an input variable's function takes no argument and gives its default). One run is a dict
    ``{variable: value}``. ``CausalModel(...)`` in pyvene's form returns this class; the batched
    :class:`CausalModel` is the fast path for large datasets.

    Methods as in pyvene: :meth:`run_forward`, :meth:`run_interchange`,
    :meth:`generate_equiv_classes`, :meth:`sample_input`, :meth:`sample_intervention`,
    :meth:`sample_input_tree_balanced`, :meth:`generate_factual_dataset`,
    :meth:`generate_counterfactual_dataset`. ``timesteps`` (default: depth in the graph, outputs
    at the last step) and ``equiv_classes`` are attributes.
    """

    def __init__(self, variables, values, parents, functions, timesteps=None, equiv_classes=None, pos=None):
        variables = sorted(variables)
        for label, mapping in (("values", values), ("parents", parents), ("functions", functions)):
            if not isinstance(mapping, Mapping):
                raise ConfigError(f"{label}: expected a dict keyed by variable, got {type(mapping).__name__}")
            missing = [v for v in variables if v not in mapping]
            if missing:
                raise ConfigError(f"{label}: missing variable(s) {missing}; every variable needs an entry")
        for var in variables:
            bad = [p for p in parents[var] if p not in variables]
            if bad:
                raise ConfigError(f"parents[{var!r}]: {bad} are not among variables {variables}")
            if not callable(functions[var]):
                raise ConfigError(f"functions[{var!r}]: expected a function of {list(parents[var])}, "
                                  f"got {type(functions[var]).__name__}")
        self.values = values
        self.parents = {v: list(parents[v]) for v in variables}
        self.functions = functions
        self.children = {v: [c for c in variables if v in self.parents[c]] for v in variables}
        self.variables = variables
        self.order = self._topological_order()
        self.inputs = [v for v in variables if not self.parents[v]]
        self.outputs = [v for v in variables if not self.children[v]]
        self.sampler = None
        self.samplers = {}
        if timesteps is None:
            timesteps = {}
            for v in self.order:
                timesteps[v] = 1 + max((timesteps[p] for p in self.parents[v]), default=-1)
            end = max(timesteps.values())
            for v in self.outputs:
                timesteps[v] = end
        else:
            for v in variables:
                late = [p for p in self.parents[v] if timesteps[p] >= timesteps[v]]
                if late:
                    raise ConfigError(f"timesteps[{v!r}]: must be later than its parents' {late}")
        self.timesteps = dict(timesteps)
        self.variables.sort(key=lambda v: self.timesteps[v])
        self.pos = dict(pos or {})
        self.equiv_classes = dict(equiv_classes) if equiv_classes is not None else {}
        self.run_forward()  # the default setting must compute

    # -- running ---------------------------------------------------------------------------------
    def run_forward(self, intervention=None):
        """``{variable: value}`` for one run; variables in ``intervention`` are fixed to its values
        (an input variable not given takes its function's default)."""
        fixed = dict(intervention or {})
        setting = {}
        for v in self.order:
            if v in fixed:
                setting[v] = fixed[v]
            else:
                setting[v] = self.functions[v](*(setting[p] for p in self.parents[v]))
        return {v: setting[v] for v in self.variables}

    def run_interchange(self, input, source_interventions):
        """Run on ``input`` with each variable of ``source_interventions`` ({variable: source
        setting}) set to its value on that source."""
        setting = copy.deepcopy(dict(input))
        for var, source in source_interventions.items():
            self._check(var, "source_interventions")
            setting[var] = self.run_forward(source)[var]
        return self.run_forward(setting)

    # -- sampling --------------------------------------------------------------------------------
    def generate_equiv_classes(self):
        """For every non-input variable, ``{value: [parent settings giving it]}``."""
        for var in self.variables:
            if var in self.inputs or var in self.equiv_classes:
                continue
            classes = {val: [] for val in self.values[var]}
            for combo in itertools.product(*(self.values[p] for p in self.parents[var])):
                value = self.functions[var](*combo)
                classes.setdefault(value, []).append(dict(zip(self.parents[var], combo)))
            self.equiv_classes[var] = classes
        return self.equiv_classes

    def sample_input(self, mandatory=None, **_ignored):
        """A random input setting (uniform over each input's values); with ``mandatory``, one
        whose full run satisfies it."""
        while True:
            setting = {v: random.choice(list(self.values[v])) for v in self.inputs}
            if mandatory is None or mandatory(self.run_forward(setting)):
                return setting

    def sample_intervention(self, mandatory=None):
        """A random non-empty setting of intermediate variables (neither inputs nor outputs)."""
        middle = [v for v in self.variables if v not in self.inputs and v not in self.outputs]
        if not middle:
            raise ConfigError("sample_intervention: the model has no intermediate variable to intervene on")
        intervention = {}
        while not intervention:
            for v in middle:
                if random.choice([0, 1]) == 0:
                    intervention[v] = random.choice(list(self.values[v]))
        return intervention

    def sample_input_tree_balanced(self, output_var=None, output_var_value=None):
        """An input setting drawn so that ``output_var`` takes each of its values equally often:
        pick the value, then a parent setting giving it, recursively down to the inputs."""
        if output_var is None:
            if len(self.outputs) != 1:
                raise ConfigError(f"output_var: the model has outputs {self.outputs}; name one")
            output_var = self.outputs[0]
        self.generate_equiv_classes()
        if output_var_value is None:
            output_var_value = random.choice(list(self.values[output_var]))
        setting: dict = {}

        def descend(var, value):
            choices = self.equiv_classes[var].get(value)
            if not choices:
                raise ConfigError(f"output_var_value: no parent setting of {var!r} gives {value!r}")
            for parent, pval in random.choice(choices).items():
                if parent in self.inputs:
                    setting[parent] = pval
                else:
                    descend(parent, pval)

        if output_var in self.inputs:
            setting[output_var] = output_var_value
        else:
            descend(output_var, output_var_value)
        for v in self.inputs:
            if v not in setting:
                setting[v] = random.choice(list(self.values[v]))
        return setting

    # -- datasets --------------------------------------------------------------------------------
    def input_to_tensor(self, setting) -> torch.Tensor:
        return torch.cat([torch.as_tensor(setting[v]).float().reshape(-1) for v in self.inputs])

    def output_to_tensor(self, setting) -> torch.Tensor:
        return torch.cat([torch.as_tensor(float(setting[v])).reshape(-1) for v in self.outputs])

    def generate_factual_dataset(self, size, sampler=None, filter=None, device="cpu", input_function=None,
                                 output_function=None, return_tensors=True):
        """``size`` examples ``{"input_ids": input, "labels": full run}`` (tensors by default)."""
        sampler = sampler or self.sample_input
        input_function = input_function or self.input_to_tensor
        output_function = output_function or self.output_to_tensor
        examples = []
        while len(examples) < size:
            inp = sampler()
            if filter is not None and not filter(inp):
                continue
            out = self.run_forward(inp)
            if return_tensors:
                examples.append({"input_ids": input_function(inp).to(device),
                                 "labels": output_function(out).to(device)})
            else:
                examples.append({"input_ids": inp, "labels": out})
        return examples

    def generate_counterfactual_dataset(self, size, intervention_id, batch_size, sampler=None,
                                        intervention_sampler=None, filter=None, device="cpu",
                                        input_function=None, output_function=None, return_tensors=True):
        """Interchange examples: ``input_ids`` (base), ``source_input_ids`` (one source per
        intervened variable, padded to the number of intermediate variables), ``intervention_id``,
        ``base_labels`` and ``labels`` (the interchange run). ``batch_size`` examples share one
        sampled intervention; the source of variable ``v`` is drawn with
        ``sampler(output_var=v, output_var_value=value)``."""
        sampler = sampler or self.sample_input
        intervention_sampler = intervention_sampler or self.sample_intervention
        input_function = input_function or self.input_to_tensor
        output_function = output_function or self.output_to_tensor
        width = len([v for v in self.variables if v not in self.inputs and v not in self.outputs])
        examples = []
        while len(examples) < size:
            intervention = intervention_sampler()
            if filter is not None and not filter(intervention):
                continue
            for _ in range(batch_size):
                base = sampler()
                source_of = {v: sampler(output_var=v, output_var_value=intervention[v])
                             for v in self.variables if v in intervention}
                sources = list(source_of.values())
                labels = self.run_interchange(base, source_of)
                base_labels = self.run_forward(base)
                if return_tensors:
                    tensors = [input_function(s) for s in sources]
                    tensors += [torch.zeros_like(input_function(base))] * (width - len(tensors))
                    examples.append({
                        "labels": output_function(labels).to(device),
                        "base_labels": output_function(base_labels).to(device),
                        "input_ids": input_function(base).to(device),
                        "source_input_ids": torch.stack(tensors).to(device),
                        "intervention_id": torch.tensor([intervention_id(intervention)]).to(device),
                    })
                else:
                    examples.append({
                        "labels": labels, "base_labels": base_labels, "input_ids": base,
                        "source_input_ids": sources + [{}] * (width - len(sources)),
                        "intervention_id": [intervention_id(intervention)],
                    })
        return examples


def hierarchical_equality(embed_dim: int = 4, low: float = -1.0, high: float = 1.0) -> CausalModel:
    """The hierarchical-equality task of Geiger et al.: four entity vectors W, X, Y, Z; the
    label says whether (W == X) equals (Y == Z).

    Inputs are sampled so that each pair is equal with probability 1/2 independently (random
    vectors are never equal by chance), which also balances the label.
    """

    check_positive_int(embed_dim, "hierarchical_equality: embed_dim")
    check_number(low, "hierarchical_equality: low")
    check_number(high, "hierarchical_equality: high")
    if not low < high:
        raise ConfigError(f"hierarchical_equality: low must be below high, got low={low!r}, high={high!r}")

    def sampler(n, g):
        v = torch.rand(n, 4, embed_dim, generator=g) * (high - low) + low
        wx = torch.rand(n, generator=g) < 0.5
        yz = torch.rand(n, generator=g) < 0.5
        v[wx, 1] = v[wx, 0]
        v[yz, 3] = v[yz, 2]
        return {"W": v[:, 0], "X": v[:, 1], "Y": v[:, 2], "Z": v[:, 3]}

    def equal(a, b):
        return (a == b).all(-1)

    return CausalModel(
        variables=["W", "X", "Y", "Z", "WX", "YZ", "O"],
        parents={"WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"]},
        functions={"WX": equal, "YZ": equal, "O": lambda a, b: a == b},
        sampler=sampler,
    )
