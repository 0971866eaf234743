"""Small MLP and GRU models with pyvene's configs and module layout.

pyvene ships two toy model families that its tests and tutorials build directly
(``MLPConfig`` + ``MLPForClassification``, ``GRUConfig`` + the GRU models). pyvene code
reaches into their submodules by attribute path (``mlp.mlp.h[0].ff1``, ``mlp.score``,
``gru.gru.cells[0].x2h``), so the attribute names, config field names, defaults and
forward signatures here are pyvene's. The implementation is our own.

Differences from pyvene, on purpose:

* ``GRUModel`` adds position embeddings out of place (pyvene adds them into the caller's
  ``inputs_embeds`` tensor) and builds the zero initial state from ``h_dim`` (pyvene's
  ``GRUCell`` reads an attribute it never sets when called without a state).
* ``GRUForClassification`` computes its loss from ``n_labels`` (pyvene reads a model
  attribute that does not exist, so its loss path raises).
* The GRU heads pass keyword arguments to ``GRUModel``; pyvene passes them by position
  and shifts ``output_hidden_states``/``return_dict`` one slot, so its GRU heads always
  return tuples. Ours do too unless ``return_dict=True`` is asked for.

Both configs map the standard names ``hidden_size`` and ``num_hidden_layers`` onto
``h_dim`` and ``n_layer`` (``attribute_map``), so the site resolver finds the width and
the layer stack (``mlp.h`` / ``gru.cells``) without family-specific code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput
from transformers.utils import ModelOutput

__all__ = [
    "MLPConfig",
    "MLPBlock",
    "MLPModel",
    "MLPModelOutput",
    "MLPForClassification",
    "GRUConfig",
    "GRUCell",
    "GRUModel",
    "GRUModelOutput",
    "GRUForClassification",
    "GRULMHeadModel",
]

_STANDARD_NAMES = {"hidden_size": "h_dim", "num_hidden_layers": "n_layer"}


def _classification_loss(config, logits: torch.Tensor, labels: torch.Tensor, n_classes: int):
    """The loss HF sequence classifiers use: the problem type is inferred once, then fixed."""
    if config.problem_type is None:
        if n_classes == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if n_classes == 1:
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze())
        return nn.functional.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.reshape(-1, n_classes), labels.reshape(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


# ---------------------------------------------------------------------------------- MLP


class MLPConfig(PretrainedConfig):
    """A stack of ``n_layer`` blocks ``dropout(act(ff1(x)))`` of width ``h_dim``, then a linear head."""

    model_type = "mlp"
    attribute_map = _STANDARD_NAMES

    def __init__(
        self,
        include_emb: bool = False,
        vocab_size: int = 50_257,
        max_position_embeddings: int = 512,
        n_layer: int = 2,
        h_dim: int = 512,
        num_classes: int = 2,
        activation_function: str = "gelu",
        pdrop: float = 0.3,
        problem_type: str | None = "single_label_classification",
        include_bias: bool = True,
        squeeze_output: bool = True,
        **kwargs,
    ):
        self.include_emb = include_emb
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.n_layer = n_layer
        self.h_dim = h_dim
        self.num_classes = num_classes
        self.activation_function = activation_function
        self.pdrop = pdrop
        self.include_bias = include_bias
        self.squeeze_output = squeeze_output
        super().__init__(problem_type=problem_type, **kwargs)


@dataclass
class MLPModelOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class MLPBlock(nn.Module):
    """One layer: ``ff1`` (h_dim -> h_dim), the activation ``act``, then dropout."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.ff1 = nn.Linear(config.h_dim, config.h_dim, bias=config.include_bias)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.ff1(hidden_states)))


class MLPPreTrainedModel(PreTrainedModel):
    config_class = MLPConfig
    base_model_prefix = "mlp"


class MLPModel(MLPPreTrainedModel):
    """The block stack ``h``; token and position embeddings ``wte``/``wpe`` when ``include_emb``."""

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        self.h_dim = config.h_dim
        if config.include_emb:
            self.wte = nn.Embedding(config.vocab_size, config.h_dim)
            self.wpe = nn.Embedding(config.max_position_embeddings, config.h_dim)
        self.dropout = nn.Dropout(config.pdrop)
        self.h = nn.ModuleList(MLPBlock(config) for _ in range(config.n_layer))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module | None:
        return getattr(self, "wte", None)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | MLPModelOutput:
        hidden = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is not None:
            hidden = hidden + self.wpe(position_ids)
        hidden = self.dropout(hidden)
        collected: list[torch.Tensor] = []
        for block in self.h:
            collected.append(hidden)
            hidden = block(hidden)
        collected.append(hidden)
        all_hidden = tuple(collected) if output_hidden_states else None
        if not return_dict:
            return (hidden,) if all_hidden is None else (hidden, all_hidden)
        return MLPModelOutput(last_hidden_state=hidden, hidden_states=all_hidden)


class MLPForClassification(MLPPreTrainedModel):
    """``MLPModel`` under ``mlp`` and a linear head ``score`` (h_dim -> num_classes).

    With ``squeeze_output`` the logits lose dimension 1 (inputs of shape [batch, 1, h_dim]
    give [batch, num_classes]). Returns a tuple ``(loss?, logits, hidden_states?)`` unless
    ``return_dict=True``, as pyvene's model does.
    """

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        self.num_classes = config.num_classes
        self.squeeze_output = config.squeeze_output
        self.mlp = MLPModel(config)
        self.score = nn.Linear(config.h_dim, config.num_classes, bias=config.include_bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module | None:
        return self.mlp.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | SequenceClassifierOutput:
        out = self.mlp(
            input_ids=input_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        logits = self.score(out[0])
        if self.squeeze_output:
            logits = logits.squeeze(1)
        loss = None
        if labels is not None:
            loss = _classification_loss(self.config, logits, labels, self.num_classes)
        if not return_dict:
            rest = (logits,) + tuple(out[1:])
            return rest if loss is None else (loss,) + rest
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


# ---------------------------------------------------------------------------------- GRU


class GRUConfig(PretrainedConfig):
    """A stack of ``n_layer`` GRU cells of width ``h_dim`` unrolled over the sequence."""

    model_type = "gru"
    attribute_map = _STANDARD_NAMES

    def __init__(
        self,
        include_emb: bool = False,
        vocab_size: int = 50_257,
        max_position_embeddings: int = 512,
        n_layer: int = 2,
        h_dim: int = 512,
        n_labels: int = 2,
        include_bias: bool = True,
        pdrop: float = 0.3,
        problem_type: str | None = "single_label_classification",
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.include_emb = include_emb
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.n_layer = n_layer
        self.h_dim = h_dim
        self.n_labels = n_labels
        self.include_bias = include_bias
        self.pdrop = pdrop
        self.initializer_range = initializer_range
        super().__init__(problem_type=problem_type, **kwargs)


class GRUCell(nn.Module):
    """One GRU step: ``x2h`` and ``h2h`` (h_dim -> 3*h_dim, chunks reset | update | new),
    gates ``reset_act``/``update_act`` (sigmoid) and ``new_act`` (tanh);
    ``h' = z * h + (1 - z) * n`` with ``n = tanh(x_n + r * h_n)``.
    """

    def __init__(self, config: GRUConfig):
        super().__init__()
        self.h_dim = config.h_dim
        self.include_bias = config.include_bias
        self.x2h = nn.Linear(config.h_dim, 3 * config.h_dim, bias=config.include_bias)
        self.h2h = nn.Linear(config.h_dim, 3 * config.h_dim, bias=config.include_bias)
        self.reset_act = nn.Sigmoid()
        self.update_act = nn.Sigmoid()
        self.new_act = nn.Tanh()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.h_dim)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def forward(self, current_states: torch.Tensor, hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        if hidden_states is None:
            hidden_states = current_states.new_zeros(current_states.shape[0], self.h_dim)
        x_reset, x_update, x_new = self.x2h(current_states).chunk(3, dim=-1)
        h_reset, h_update, h_new = self.h2h(hidden_states).chunk(3, dim=-1)
        reset = self.reset_act(x_reset + h_reset)
        update = self.update_act(x_update + h_update)
        new = self.new_act(x_new + reset * h_new)
        return update * hidden_states + (1 - update) * new


@dataclass
class GRUModelOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: torch.FloatTensor | None = None


class GRUPreTrainedModel(PreTrainedModel):
    config_class = GRUConfig
    base_model_prefix = "gru"

    def _init_weights(self, module):
        # The cells keep their own uniform init; only embeddings are drawn from the config.
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()


class GRUModel(GRUPreTrainedModel):
    """The cell stack ``cells``, each cell called once per time step and layer.

    Returns ``(hidden_states, last_hidden_state)``: the top layer's state at every step
    [batch, seq, h_dim] and at the last step [batch, h_dim] (a ``GRUModelOutput`` with
    ``return_dict=True``). ``hidden_states=`` takes initial states [n_layer, batch, h_dim].
    """

    def __init__(self, config: GRUConfig):
        super().__init__(config)
        self.h_dim = config.h_dim
        self.include_bias = config.include_bias
        self.n_layer = config.n_layer
        if config.include_emb:
            self.wte = nn.Embedding(config.vocab_size, config.h_dim)
            self.wpe = nn.Embedding(config.max_position_embeddings, config.h_dim)
        self.cells = nn.ModuleList(GRUCell(config) for _ in range(config.n_layer))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module | None:
        return getattr(self, "wte", None)

    def set_input_embeddings(self, new_embeddings: nn.Module) -> None:
        self.wte = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        hidden_states: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | GRUModelOutput:
        embeds = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is not None:
            embeds = embeds + self.wpe(position_ids)
        batch, seq_len = embeds.shape[:2]
        if hidden_states is None:
            states = [embeds.new_zeros(batch, self.h_dim) for _ in range(self.n_layer)]
        else:
            states = [hidden_states[i] for i in range(self.n_layer)]
        top: list[torch.Tensor] = []
        for t in range(seq_len):
            below = embeds[:, t, :]
            for i, cell in enumerate(self.cells):
                states[i] = cell(below, states[i])
                below = states[i]
            top.append(below)
        all_steps = torch.stack(top, dim=1)
        last = top[-1]
        if not return_dict:
            return (all_steps, last)
        return GRUModelOutput(hidden_states=all_steps, last_hidden_state=last)


def _last_positions(input_ids, inputs_embeds, attention_mask) -> torch.Tensor:
    if attention_mask is not None:
        return attention_mask.sum(dim=-1).long() - 1
    ref = input_ids if input_ids is not None else inputs_embeds
    batch, seq_len = ref.shape[:2]
    return torch.full((batch,), seq_len - 1, dtype=torch.long, device=ref.device)


class GRUForClassification(GRUPreTrainedModel):
    """``GRUModel`` under ``gru`` and a head ``score`` (h_dim -> n_labels, no bias) on the
    state at the last position (the last unmasked one with ``attention_mask``)."""

    def __init__(self, config: GRUConfig):
        super().__init__(config)
        self.n_labels = config.n_labels
        self.gru = GRUModel(config)
        self.score = nn.Linear(config.h_dim, config.n_labels, bias=False)

    def get_input_embeddings(self) -> nn.Module | None:
        return self.gru.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        attention_mask: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | SequenceClassifierOutput:
        out = self.gru(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
        steps = out[0]
        last = _last_positions(input_ids, inputs_embeds, attention_mask).to(steps.device)
        pooled = steps[torch.arange(steps.shape[0], device=steps.device), last]
        logits = self.score(pooled)
        loss = None
        if labels is not None:
            loss = _classification_loss(self.config, logits, labels, self.n_labels)
        if not return_dict:
            rest = (logits,) + tuple(out[1:])
            return rest if loss is None else (loss,) + rest
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=steps)


class GRULMHeadModel(GRUPreTrainedModel):
    """``GRUModel`` under ``gru`` and ``lm_head`` (h_dim -> vocab_size, no bias) at every step;
    ``labels`` give the shifted next-token cross-entropy."""

    def __init__(self, config: GRUConfig):
        super().__init__(config)
        self.n_labels = config.n_labels
        self.gru = GRUModel(config)
        self.lm_head = nn.Linear(config.h_dim, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Module | None:
        return self.gru.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | CausalLMOutput:
        out = self.gru(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)
        logits = self.lm_head(out[0])
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            shifted = logits[..., :-1, :]
            loss = nn.functional.cross_entropy(
                shifted.reshape(-1, shifted.shape[-1]), labels[..., 1:].reshape(-1)
            )
        if not return_dict:
            rest = (logits,) + tuple(out[1:])
            return rest if loss is None else (loss,) + rest
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=out[0])

