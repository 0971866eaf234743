"""IntervenableModel: an ordinary ``nn.Module`` that runs a model with declared interventions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import IntervenableConfig, RepresentationConfig
from .engine import generate as _generation
from .engine.outputs import (
    IntervenableModelOutput as IntervenableModelOutput,  # what forward returns
)
from .engine.outputs import shape_outputs
from .engine.plan import Plan, compile_plan
from .engine.runner import Executor
from .errors import ConfigError
from .types import Device, Inputs, PathLike, Subspaces, UnitLocations

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, HfApi

    from .sites import Site


def _as_config(config) -> IntervenableConfig:
    if isinstance(config, IntervenableConfig):
        return config
    if isinstance(config, (RepresentationConfig, dict, list, tuple)):
        if isinstance(config, dict) and "representations" in config:
            return IntervenableConfig.from_dict(config)
        return IntervenableConfig(config)
    raise ConfigError(
        f"config must be an IntervenableConfig, a RepresentationConfig, a dict or a list of them, "
        f"got {type(config).__name__}"
    )


class InterventionKeyError(ConfigError, KeyError):
    """An intervention looked up by a key the model does not have."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0])


class InterventionMap(nn.ModuleList):
    """The model's interventions, in config order, addressable by position *and* by key.

    As a list (``im.interventions[0]``, ``len``, iteration over the modules, state-dict keys
    ``"0.<param>"``) it is the ``nn.ModuleList`` it always was; as a mapping (pyvene's
    ``im.interventions["layer_0.block_output.pos#0"]``, ``keys()``, ``values()``, ``items()``,
    ``key in``) it is keyed by the representation key, one per representation (linked
    representations share one module under two keys).
    """

    def __init__(self, keys, modules):
        super().__init__(modules)
        self._keys = list(keys)

    def __getitem__(self, idx):
        if isinstance(idx, str):
            try:
                return super().__getitem__(self._keys.index(idx))
            except ValueError:
                raise InterventionKeyError(
                    f"interventions[{idx!r}]: no intervention under this key; keys: {self._keys}"
                ) from None
        return super().__getitem__(idx)

    def __contains__(self, item) -> bool:
        if isinstance(item, str):
            return item in self._keys
        return any(m is item for m in self)

    def keys(self) -> list[str]:
        return list(self._keys)

    def values(self) -> list[nn.Module]:
        return list(self)

    def items(self) -> list[tuple[str, nn.Module]]:
        return list(zip(self._keys, self))

    def get(self, key: str, default=None):
        return self[key] if key in self._keys else default


def _site_device(model: nn.Module, module: nn.Module, parents: dict):
    """Where ``module`` runs: an accelerate hook's execution device on it or an ancestor, else
    the first non-meta parameter of the module, else of the model."""
    m = module
    while m is not None:
        dev = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if dev is not None:
            return torch.device(dev)
        m = parents.get(id(m))
    for p in list(module.parameters()) + list(model.parameters()):
        if p.device.type != "meta":
            return p.device
    return None


def _is_recurrent(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.RNNBase, nn.RNNCellBase)) for m in model.modules()) or \
        getattr(getattr(model, "config", None), "model_type", None) == "gru"


class IntervenableModel(nn.Module):
    """Wraps ``model`` with the interventions declared in ``config``.

    Calling it returns ``(original_outputs, intervened_outputs)`` (``original_outputs`` is
    ``None`` unless ``output_original_output=True``), or an
    :class:`IntervenableModelOutput` with ``return_dict=True``. When the config holds
    Collect interventions and ``return_dict`` is False, it returns
    ``((original_outputs, collected_activations), intervened_outputs)`` as pyvene does.

    The wrapped model is never modified: hooks exist only during a call.
    """

    def __init__(self, config: IntervenableConfig | Mapping[str, Any] | Sequence[Any], model: nn.Module,
                 use_fast: bool = False) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.config = _as_config(config)
        self.model = model
        self.mode = self.config.mode
        #: The compiled config (:class:`~pyvene_like.engine.plan.Plan`): slots, (module, io) groups.
        self.plan: Plan = compile_plan(self.config, model)
        self._executor = Executor(self.plan)
        #: pyvene's flag, kept for code that reads it; every call takes the same (fast) path here.
        self.use_fast = bool(use_fast)
        self.interventions = InterventionMap([s.key for s in self.plan.slots],
                                             [s.intervention for s in self.plan.slots])
        self.representations = {s.key: s.rep for s in self.plan.slots}
        # Each intervention lives where its site computes: the hooked module's device, or the
        # execution device accelerate gives it when weights are offloaded (device_map with
        # "cpu"/"disk", cpu_offload), where parameters sit on the meta device.
        parents = {id(child): parent for parent in model.modules() for child in parent.children()}
        for slot in self.plan.slots:
            device = _site_device(model, slot.site.module, parents)
            if device is not None:
                slot.intervention.to(device)

    # -- information ----------------------------------------------------------------------
    @property
    def intervention_keys(self) -> list[str]:
        return [s.key for s in self.plan.slots]

    @property
    def sites(self) -> list[Site]:
        """Resolved sites, one per intervention, in config order."""
        return [s.site for s in self.plan.slots]

    def __repr__(self) -> str:
        lines = [f"  {s.key}: {type(s.intervention).__name__} on {s.site.description}" for s in self.plan.slots]
        return f"IntervenableModel(model={type(self.model).__name__}, mode={self.mode!r},\n" + "\n".join(lines) + "\n)"

    @property
    def is_model_stateless(self) -> bool:
        """False for a recurrent model whose cell runs once per step (pyvene's GRU), else True."""
        return not _is_recurrent(self.model)

    def set_device(self, device: Device, set_model: bool = True) -> IntervenableModel:
        """Move the interventions (and, with ``set_model``, the wrapped model) to ``device``."""
        self.interventions.to(device)
        if set_model:
            self.model.to(device)
        return self

    def get_device(self) -> torch.device:
        """The wrapped model's device (its first parameter's)."""
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def count_parameters(self, include_model: bool = False) -> int:
        """Number of trainable intervention parameters (and the model's, if asked)."""
        params = self.get_trainable_parameters()
        n = sum(p.numel() for p in params)
        if include_model:
            n += sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return n

    def get_trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.interventions.parameters() if p.requires_grad]

    def disable_model_gradients(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)

    def enable_model_gradients(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)

    def disable_intervention_gradients(self) -> None:
        for p in self.interventions.parameters():
            p.requires_grad_(False)

    # -- saving and sharing (files: pyvene_like.serialization; the Hub: pyvene_like.hub) -----------
    def save_pretrained(self, save_directory: PathLike, *, repo_id: str | None = None, push_to_hub: bool = False,
                        **push_to_hub_kwargs: Any) -> Path:
        """Write ``config.json``, ``interventions.safetensors`` and a ``README.md`` model card.

        The wrapped model is not saved, only its identity (Hub id when it has one,
        ``model_type``, config hash). As with ``huggingface_hub.ModelHubMixin``,
        ``push_to_hub=True`` also uploads the save to ``repo_id`` (``push_to_hub_kwargs`` go to
        :meth:`push_to_hub`). Returns the folder as a ``Path``.
        """
        from . import hub

        folder = hub.save_pretrained(self, save_directory, repo_id=repo_id)
        if push_to_hub:
            if repo_id is None:
                raise ConfigError("save_pretrained: push_to_hub=True needs repo_id='owner/name'")
            self.push_to_hub(repo_id, **push_to_hub_kwargs)
        return folder

    @classmethod
    def from_pretrained(cls, path_or_repo_id: PathLike, model: nn.Module | None = None, *,
                        functions: dict | None = None, revision: str | None = None,
                        cache_dir: PathLike | None = None, local_files_only: bool = False,
                        token: str | bool | None = None) -> IntervenableModel:
        """Rebuild the interventions saved in a folder or Hub repo on ``model``.

        A repo id is fetched with ``huggingface_hub.snapshot_download`` (cache and
        ``HF_HUB_OFFLINE`` honoured). ``functions`` gives back plain-function interventions,
        keyed by their saved name or representation index. Loading onto a model other than the
        one saved on warns; bad files raise :class:`~pyvene_like.LoadError`.
        """
        from . import hub

        return hub.load_pretrained(path_or_repo_id, model, functions=functions, revision=revision,
                                   cache_dir=cache_dir, local_files_only=local_files_only,
                                   token=token, cls=cls)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | bool | None = None,
                    revision: str | None = None, commit_message: str | None = None,
                    create_pr: bool = False, api: HfApi | None = None) -> CommitInfo:
        """Save to a temporary folder and upload it to ``repo_id`` (created when missing)."""
        from . import hub

        return hub.push_to_hub(self, repo_id, private=private, token=token, revision=revision,
                               commit_message=commit_message, create_pr=create_pr, api=api)

    def save(self, save_directory: PathLike, save_to_hf_hub: bool = False, hf_repo_name: str | None = None,
             include_model: bool = False) -> Path:
        """pyvene's name for :meth:`save_pretrained` (same safetensors files, never a pickle).

        ``save_to_hf_hub=True`` also uploads to ``hf_repo_name``. ``include_model=True`` is
        refused: the wrapped model is saved with its own ``save_pretrained``.
        """
        if include_model:
            raise ConfigError("save: include_model=True is not supported; save the model with its own "
                              "save_pretrained and pass it to load(..., model=)")
        if save_to_hf_hub and not hf_repo_name:
            raise ConfigError("save: save_to_hf_hub=True needs hf_repo_name='owner/name'")
        return self.save_pretrained(save_directory, repo_id=hf_repo_name if save_to_hf_hub else None,
                                    push_to_hub=save_to_hf_hub)

    @classmethod
    def load(cls, load_directory: PathLike, model: nn.Module, local_directory: PathLike | None = None,
             from_huggingface_hub: bool = False, include_model: bool = False) -> IntervenableModel:
        """pyvene's name for :meth:`from_pretrained` (a folder, or a Hub repo id)."""
        if include_model:
            raise ConfigError("load: include_model=True is not supported; load the model yourself and pass model=")
        return cls.from_pretrained(load_directory, model, cache_dir=local_directory)

    # -- pyvene's alignment helpers ------------------------------------------------------------
    def _batch_locations(self, inputs) -> dict:
        """pyvene's batch fields ``"source_<i>->base.<0|1>.<unit part>"`` -> ``unit_locations``
        (parallel mode: one source/base pair per representation, in config order)."""
        if self.mode != "parallel":
            raise ConfigError("train_alignment / eval_alignment: only mode='parallel' is supported; "
                              "use pyvene_like.Trainer for serial interventions")
        sides: tuple[list, list] = ([], [])
        for i, slot in enumerate(self.plan.slots):
            for side in (0, 1):
                parts = []
                for part in slot.rep.unit.split("."):
                    name = f"source_{i}->base.{side}.{part}"
                    if name not in inputs:
                        raise ConfigError(f"train_alignment: the batch has no field {name!r}; pyvene's batches "
                                          f"name each intervention's locations 'source_<i>->base.<0|1>.<unit>'")
                    parts.append(inputs[name])
                sides[side].append(parts[0] if len(parts) == 1 else parts)
        return {"sources->base": sides}

    def _alignment_call(self, inputs):
        return self(
            {"input_ids": inputs["input_ids"]},
            [{"input_ids": inputs["source_input_ids"]}],
            self._batch_locations(inputs),
            subspaces=inputs.get("subspaces"),
        )[1]

    def train_alignment(self, train_dataloader: Iterable[dict[str, Any]], compute_loss: Callable[..., torch.Tensor],
                        compute_metrics: Callable[..., Any], inputs_collator: Callable | None = None,
                        **kwargs: Any) -> None:
        """pyvene's training call: Adam (``lr``, default 1e-3) over the intervention
        parameters, a linear schedule with 10% warm-up, ``epochs`` (default 10), optional
        ``gradient_accumulation_steps``, ``optimizer=`` / ``scheduler=`` overrides, and the
        temperature of boundless interventions annealed from 50 to 0.1. Batches carry
        ``input_ids``, ``source_input_ids``, ``labels``, optional ``subspaces`` and the
        locations as ``"source_<i>->base.<0|1>.pos"``. :class:`~pyvene_like.Trainer` is the
        full-featured loop (accelerate, checkpoints, IIA evaluation, early stopping).
        """
        from tqdm.auto import trange
        from transformers import get_linear_schedule_with_warmup

        epochs = int(kwargs.get("epochs", 10))
        accumulate = int(kwargs.get("gradient_accumulation_steps", 1))
        total = len(train_dataloader) * epochs
        optimizer = kwargs.get("optimizer") or torch.optim.Adam(self.get_trainable_parameters(),
                                                                lr=kwargs.get("lr", 1e-3))
        # 10% warm-up counted as pyvene counts it, unrounded: with fewer than ten steps the
        # first step has learning rate 0 in both
        scheduler = kwargs.get("scheduler") or get_linear_schedule_with_warmup(
            optimizer, num_warmup_steps=0.1 * total, num_training_steps=total)
        temperatures = torch.linspace(50.0, 0.1, max(total, 1))
        self.model.eval()
        step = 0
        bar = trange(epochs, desc="Epoch")
        for _ in bar:
            for inputs in train_dataloader:
                if inputs_collator is not None:
                    inputs = inputs_collator(inputs)
                logits = self._alignment_call(inputs).logits
                metrics = compute_metrics([logits], [inputs["labels"]])
                loss = compute_loss(logits, inputs["labels"])
                bar.set_postfix({"loss": round(loss.item(), 2), "acc": metrics})
                (loss / accumulate if accumulate > 1 else loss).backward()
                if step % accumulate == 0 and not (accumulate > 1 and step == 0):
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    for iv in self.interventions:
                        if isinstance(getattr(iv, "temperature", None), torch.Tensor):
                            iv.set_temperature(temperatures[step])
                step += 1

    def eval_alignment(self, eval_dataloader: Iterable[dict[str, Any]], compute_metrics: Callable[..., Any],
                       inputs_collator: Callable | None = None, **kwargs: Any) -> float:
        """pyvene's evaluation call: ``compute_metrics([logits], [labels])`` per batch, averaged
        with the batch sizes as weights."""
        total, weight = 0.0, 0
        with torch.no_grad():
            for inputs in eval_dataloader:
                if inputs_collator is not None:
                    inputs = inputs_collator(inputs)
                logits = self._alignment_call(inputs).logits
                n = len(inputs["input_ids"])
                total += float(compute_metrics([logits], [inputs["labels"]])) * n
                weight += n
        return total / weight if weight else float("nan")

    # -- running ----------------------------------------------------------------------------
    def collect_source_representations(self, sources: Sequence[Inputs | None],
                                       unit_locations: UnitLocations = None) -> list:
        """Source activations at every intervention's units, without running the base.

        Returns one ``[batch, units, width]`` tensor per intervention (``None`` for those that
        take no source), ready to pass back as ``source_representations=``: the same call with
        them gives the same outputs as with ``sources``, minus the source passes. Sources are
        fixed inputs, so a trainer computes these once and reuses them every epoch.
        """
        return self._executor.collect_sources(self.model, sources, unit_locations)

    def forward(
        self,
        base: Inputs,
        sources: Sequence[Inputs | None] | Inputs | None = None,
        unit_locations: UnitLocations = None,
        source_representations: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
        subspaces: Subspaces = None,
        output_original_output: bool = False,
        return_dict: bool = False,
    ) -> Any:
        original, intervened, collected = self._executor.forward(
            self.model,
            base,
            sources=sources,
            unit_locations=unit_locations,
            source_representations=source_representations,
            subspaces=subspaces,
            output_original_output=output_original_output,
        )
        return shape_outputs(original, intervened, collected, self.plan.has_collect, return_dict)

    def collect(
        self,
        base: Inputs,
        sources: Sequence[Inputs | None] | Inputs | None = None,
        unit_locations: UnitLocations = None,
        source_representations: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
        subspaces: Subspaces = None,
    ) -> list[torch.Tensor]:
        """Only the Collect interventions' activations of the call ``forward`` would make, one
        tensor per Collect intervention in config order; the base pass stops right after the
        last site a Collect intervention reads, so reading layer 1 of a 12-layer model costs
        about the two first layers, not the whole model and its head.

        The interventions placed before that site still run (a Collect downstream of an edit
        sees the edit); those after it, and the model's output, are skipped. In serial mode or
        with unit ``"t"`` the pass runs to the end.
        """
        if not self.plan.has_collect:
            raise ConfigError(
                "collect: the config has no Collect intervention (intervention_type='collect'); "
                "call the model to get its outputs"
            )
        _, _, collected = self._executor.forward(
            self.model, base, sources=sources, unit_locations=unit_locations,
            source_representations=source_representations, subspaces=subspaces, stop_after_collect=True,
        )
        return collected

    def generate(
        self,
        base: Inputs,
        sources: Sequence[Inputs | None] | Inputs | None = None,
        unit_locations: UnitLocations = None,
        source_representations: Sequence[torch.Tensor | None] | torch.Tensor | None = None,
        intervene_on_prompt: bool = True,
        timesteps: str | int | Sequence[int] | None = None,
        subspaces: Subspaces = None,
        output_original_output: bool = False,
        return_dict: bool = False,
        **generate_kwargs: Any,
    ) -> Any:
        """HuggingFace ``generate`` with the interventions, identical with or without the KV cache.

        Positions are absolute per example (the p-th real token, after any left padding), across
        prompt and generated tokens. ``intervene_on_prompt`` applies the interventions at the
        prompt positions of ``unit_locations`` (``None``: all of them); ``timesteps`` (``"all"``,
        an int or a list) names generated tokens to steer: token ``t`` is steered by intervening
        at position ``prompt_length - 1 + t``, the position that predicts it, so token 0 can be
        steered too. Sources run once before generating. Returns what ``forward`` returns, with
        ``generate``'s outputs in place of the model outputs; Collect activations come as
        ``[rows, entries, width]`` (prompt positions, then timesteps). Details:
        :mod:`pyvene_like.engine.generate`.
        """
        return _generation.generate(
            self._executor, self.model, base, sources=sources, unit_locations=unit_locations,
            source_representations=source_representations, intervene_on_prompt=intervene_on_prompt,
            timesteps=timesteps, subspaces=subspaces, output_original_output=output_original_output,
            return_dict=return_dict, **generate_kwargs,
        )
