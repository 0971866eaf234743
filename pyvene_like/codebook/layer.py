"""CodebookLayer: a sparse, discrete bottleneck (Tamkin, Taufeeque and Goodman, 2023).

The input ``x`` (``[..., groups * dim]``) is split into ``groups`` chunks (one per attention
head for a grouped codebook), each chunk is optionally layer-normed and scored against the
``num_codes`` codes of its own codebook; the ``k`` best codes are selected and the chunk's
output is their mean. The backward pass is straight-through: the gradient of the output
goes unchanged to the (normed) input, and the selected codes get the gradient of the mean.

Forcing codes (what a code intervention does) is part of selection: ``forward(x,
forced=...)`` puts the forced codes of a group in place of its lowest-ranked selected codes
(``mode="replace"``), or adds them to the ``k`` selected ones (``mode="append"``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ShapeError, accepted, did_you_mean
from ..validation import check_bool, check_number, check_positive_int, is_int

SIMILARITIES = ("inner_product", "cosine", "euclidean")
FORCE_MODES = ("replace", "append")


def _positive_int(name: str, value) -> int:
    return check_positive_int(value, name)


class ForcedCodes:
    """Forced codes of one layer, prepared once as index tables.

    ``codes`` maps a group (head) to its code ids. In ``"replace"`` mode the table is
    ``[groups, k]``, the forced ids right-aligned (they take the lowest-ranked slots) and ``-1``
    where the layer's own choice stays; in ``"append"`` mode it is ``[groups, m]`` (``m`` the
    most codes forced in one group, ``-1`` padded) with per-slot mean weights ``[groups, k + m]``.
    """

    def __init__(self, layer: CodebookLayer, codes: Mapping[int, list[int]], mode: str = "replace"):
        if mode not in FORCE_MODES:
            raise ConfigError(
                f"mode {mode!r} is not a way to force codes; accepted: {accepted(FORCE_MODES)}."
                f"{did_you_mean(mode, FORCE_MODES)}"
            )
        G, N, k = layer.num_groups, layer.num_codes, layer.k
        per_group: dict[int, list[int]] = {}
        for group, ids in codes.items():
            if not 0 <= group < G:
                what = "head" if G > 1 else "group"
                raise ConfigError(
                    f"codes: {what} {group} is past the codebook {layer.name or ''} which has {G} "
                    f"{'heads' if G > 1 else 'group'} (accepted: 0..{G - 1})"
                )
            uniq = []
            for c in ids:
                if not is_int(c) or not 0 <= c < N:
                    raise ConfigError(
                        f"codes: code {c!r} (head {group}) is not a code of the codebook "
                        f"{layer.name or ''}: it has num_codes={N} (accepted: 0..{N - 1})"
                    )
                if c not in uniq:
                    uniq.append(c)
            if mode == "replace" and len(uniq) > k:
                raise ConfigError(
                    f"codes: {len(uniq)} codes forced in head {group}, but the codebook selects only "
                    f"k={k}; mode='replace' can force at most k codes per head (use mode='append' to "
                    f"add them to the k selected)"
                )
            if mode == "append" and len(uniq) + k > N:
                raise ConfigError(
                    f"codes: {len(uniq)} codes appended in head {group} to k={k} selected ones need "
                    f"{len(uniq) + k} distinct codes, but num_codes={N}"
                )
            if uniq:
                per_group[group] = uniq
        self.mode = mode
        self.codes = per_group
        mask = torch.zeros(G, N, dtype=torch.bool)
        for g, ids in per_group.items():
            mask[g, ids] = True
        self.mask = mask  # [G, N] the forced codes, excluded from the layer's own choice
        if mode == "replace":
            table = torch.full((G, k), -1, dtype=torch.long)
            for g, ids in per_group.items():
                table[g, k - len(ids):] = torch.tensor(ids)
            self.weights = None
        else:
            m = max((len(ids) for ids in per_group.values()), default=0)
            table = torch.full((G, m), -1, dtype=torch.long)
            weights = torch.zeros(G, k + m)
            for g in range(G):
                ids = per_group.get(g, [])
                table[g, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                weights[g, : k + len(ids)] = 1.0 / (k + len(ids))
            self.weights = weights  # [G, k + m]
        self.table = table
        self._on: dict = {}

    def on(self, device: torch.device | str, dtype: torch.dtype
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(mask, table, weights) on ``device``; weights in ``dtype``."""
        key = (device, dtype)
        got = self._on.get(key)
        if got is None:
            w = None if self.weights is None else self.weights.to(device=device, dtype=dtype)
            got = self._on[key] = (self.mask.to(device), self.table.to(device), w)
        return got


class CodebookLayer(nn.Module):
    """``num_groups`` codebooks of ``num_codes`` codes each, over ``dim = num_groups * group_dim``.

    Args:
        dim: width of the input (and output).
        num_codes: codes per codebook.
        k: codes selected per group and position.
        num_groups: codebooks splitting ``dim`` into equal chunks (one per attention head).
        similarity: ``"inner_product"`` (``x . c``), ``"cosine"`` (``x . c / |x||c|``) or
            ``"euclidean"`` (``-|x - c|``); the ``k`` highest scores are selected.
        layer_norm: layer-norm each chunk (learned scale and shift per group) before scoring;
            the output is then a mean of codes in that normed space.
        name: the site name, for messages.

    Parameters: ``codes`` ``[num_groups, num_codes, group_dim]``; with ``layer_norm``,
    ``ln_weight`` and ``ln_bias`` ``[num_groups, group_dim]``.
    """

    def __init__(self, dim: int, num_codes: int, k: int = 1, num_groups: int = 1,
                 similarity: str = "inner_product", layer_norm: bool = True, eps: float = 1e-5,
                 name: str | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, generator: torch.Generator | None = None):
        super().__init__()
        dim = _positive_int("dim", dim)
        self.num_codes = _positive_int("num_codes", num_codes)
        self.k = _positive_int("k", k)
        self.num_groups = _positive_int("num_groups", num_groups)
        if self.k > self.num_codes:
            raise ConfigError(f"k={k} is larger than num_codes={num_codes}; accepted: 1..{num_codes}")
        if dim % self.num_groups:
            raise ConfigError(
                f"num_groups={num_groups} does not divide the width {dim} into equal chunks"
            )
        if similarity not in SIMILARITIES:
            raise ConfigError(
                f"similarity {similarity!r} is not known; accepted: {accepted(SIMILARITIES)}."
                f"{did_you_mean(similarity, SIMILARITIES)}"
            )
        self.dim = dim
        self.group_dim = dim // self.num_groups
        self.similarity = similarity
        self.layer_norm = check_bool(layer_norm, "layer_norm")
        self.eps = check_number(eps, "eps", positive=True)
        self.name = name
        G, N, d = self.num_groups, self.num_codes, self.group_dim
        codes = torch.randn(G, N, d, generator=generator, dtype=torch.float32)
        if not self.layer_norm:
            codes = codes / math.sqrt(d)
        self.codes = nn.Parameter(codes.to(device=device, dtype=dtype or torch.get_default_dtype()))
        if self.layer_norm:
            self.ln_weight = nn.Parameter(torch.ones(G, d, device=device, dtype=dtype))
            self.ln_bias = nn.Parameter(torch.zeros(G, d, device=device, dtype=dtype))
        else:
            self.register_parameter("ln_weight", None)
            self.register_parameter("ln_bias", None)
        self._recorders: list[list] = []

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_codes={self.num_codes}, k={self.k}, num_groups={self.num_groups}, "
                f"similarity={self.similarity!r}, layer_norm={self.layer_norm}")

    # -- the computation -----------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., dim]`` -> ``[..., groups, group_dim]``, layer-normed per group when enabled."""
        if x.shape[-1] != self.dim:
            raise ShapeError(
                f"codebook {self.name or ''}: input width is {x.shape[-1]}, but the codebook was "
                f"built for width {self.dim}"
            )
        xg = x.reshape(*x.shape[:-1], self.num_groups, self.group_dim)
        if self.layer_norm:
            xg = F.layer_norm(xg, (self.group_dim,), eps=self.eps) * self.ln_weight + self.ln_bias
        return xg

    def scores(self, xg: torch.Tensor) -> torch.Tensor:
        """``[..., groups, group_dim]`` (normed) -> ``[..., groups, num_codes]``."""
        codes = self.codes
        if self.similarity == "inner_product":
            return torch.einsum("...gd,gnd->...gn", xg, codes)
        if self.similarity == "cosine":
            return torch.einsum("...gd,gnd->...gn", F.normalize(xg, dim=-1), F.normalize(codes, dim=-1))
        lead = xg.shape[:-2]
        flat = xg.reshape(-1, self.num_groups, self.group_dim).transpose(0, 1)  # [G, M, d]
        dist = torch.cdist(flat, codes)  # [G, M, N]
        return -dist.transpose(0, 1).reshape(*lead, self.num_groups, self.num_codes)

    def select(self, x: torch.Tensor, forced: ForcedCodes | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (normed input ``[..., G, d]``, code ids ``[..., G, S]``, slot weights ``[G, S]`` or
        ``None`` for a plain mean). Ids are ordered best first; forced ids take their slots."""
        xg = self.normalize(x)
        with torch.no_grad():
            s = self.scores(xg)
            if forced is None:
                return xg, s.topk(self.k, dim=-1).indices, None
            mask, table, weights = forced.on(s.device, self.codes.dtype)
            # Forced codes never count as the layer's own choice (no duplicates).
            ids = s.masked_fill(mask, float("-inf")).topk(self.k, dim=-1).indices
            if weights is None:
                ids = torch.where(table >= 0, table, ids)
            else:
                ids = torch.cat([ids, table.clamp(min=0).expand(*ids.shape[:-1], -1)], dim=-1)
        return xg, ids, weights

    def lookup(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean (or ``weights``-weighted sum) of codes: ids ``[..., G, S]`` -> ``[..., G * d]``."""
        G, N = self.num_groups, self.num_codes
        S = ids.shape[-1]
        offsets = torch.arange(G, device=ids.device).unsqueeze(-1) * N  # group g's codes start at g*N
        rows = (ids + offsets).reshape(-1, S)
        flat = self.codes.reshape(G * N, self.group_dim)
        if weights is None:
            out = F.embedding_bag(rows, flat, mode="mean")
        else:
            w = weights.expand(*ids.shape).reshape(-1, S)
            out = F.embedding_bag(rows, flat, per_sample_weights=w, mode="sum")
        return out.view(*ids.shape[:-2], G * self.group_dim)

    def forward(self, x: torch.Tensor, forced: ForcedCodes | None = None) -> torch.Tensor:
        """``[..., dim]`` -> the mean of the selected (and forced) codes, ``[..., dim]``."""
        return self.quantize(x, forced)

    def quantize(self, x: torch.Tensor, forced: ForcedCodes | None = None, record: bool = True) -> torch.Tensor:
        """``forward`` without module hooks; ``record=False`` leaves active recordings alone."""
        xg, ids, weights = self.select(x, forced)
        if record:
            for rec in self._recorders:
                rec.append(ids)
        out = self.lookup(ids, weights)
        if torch.is_grad_enabled() and xg.requires_grad:
            # Straight-through: the value is the codes' mean, the gradient to the input is identity.
            out = out + (xg - xg.detach()).reshape(out.shape)
        return out.to(x.dtype)

    def force(self, codes: Mapping[int, Sequence[int]] | Sequence[int], mode: str = "replace") -> ForcedCodes:
        """Prepare forced codes: ``{head: [code, ...]}`` or a list of codes for a 1-group codebook."""
        if not isinstance(codes, Mapping):
            if self.num_groups != 1:
                raise ConfigError(
                    f"codes: the codebook {self.name or ''} has {self.num_groups} heads; name the head "
                    f"of each code, e.g. {{head: [code, ...]}} or [[head, code], ...]"
                )
            codes = {0: list(codes)}
        return ForcedCodes(self, codes, mode)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """``with layer.recording() as ids:`` -- ``ids`` gets the ``[..., G, S]`` code ids of every
        forward inside the block (one entry per call: each generate step adds one)."""
        rec: list = []
        self._recorders.append(rec)
        try:
            yield rec
        finally:
            self._recorders.remove(rec)
