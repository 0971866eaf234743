"""Multi-process runs (``torchrun``, ``accelerate launch``): which processes there are and which
rows each one handles.

The process state is ``accelerate``'s (:class:`accelerate.PartialState`); collectives are
``accelerate.utils``' (``gather``, ``reduce``). What this module adds is one decision and one
piece of arithmetic:

* :func:`resolve_cpu`: under a multi-process launch on a machine where ``accelerate`` finds no
  device backend (a CPU-only machine), it would make every process a separate one-process run
  unless ``cpu=True`` is passed. The library passes it for the user, so the same script is
  data parallel (gloo) with no flag.
* :func:`shard_rows` / :func:`gather_rows`: a contiguous, padded share of ``n`` rows per
  process and the all-gather that puts the rows back in order, each counted once.
* :func:`refuse_fsdp`: training under FSDP is refused with what to use instead (see there).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError, PyveneLikeWarning

if TYPE_CHECKING:
    from accelerate import PartialState

#: the variables launchers set to the number of processes (accelerate reads the same ones)
_WORLD_VARS = ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"]


def launched_processes() -> int:
    """The number of processes of the launch this process belongs to (1 outside a launch)."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(_WORLD_VARS, 1)


def resolve_cpu(cpu: bool) -> bool:
    """``accelerate``'s ``cpu`` flag for this process: as given, except that a multi-process
    launch with no device backend (CPU-only machine) gets ``True``, i.e. the gloo backend."""
    if cpu or launched_processes() < 2:
        return cpu
    from accelerate.state import DistributedType, PartialState

    fresh = not PartialState._shared_state
    state = PartialState()  # accelerate's own choice of backend for this launch
    if state.distributed_type != DistributedType.NO:
        return state.distributed_type == DistributedType.MULTI_CPU
    if fresh:
        PartialState._reset_state()
        return True
    warnings.warn(
        f"launched with {launched_processes()} processes, but accelerate's process state was already made "
        f"for one process (an Accelerator or PartialState created with cpu=False on a machine without "
        f"GPUs), so each process runs on its own over all the data; create it with cpu=True, or let "
        f"pyvene_like create it", PyveneLikeWarning, stacklevel=3)
    return cpu


def process_state() -> PartialState | None:
    """``accelerate``'s ``PartialState`` when this process is one of several (made here, with
    the CPU backend where :func:`resolve_cpu` says so), else ``None``."""
    if launched_processes() < 2:
        return None
    from accelerate.state import PartialState

    state = PartialState(cpu=resolve_cpu(False))
    return state if state.num_processes > 1 else None


def shard_rows(n: int, state: PartialState | None) -> torch.Tensor:
    """This process's rows of ``0..n-1``: a contiguous block of ``ceil(n / processes)`` indices,
    padded with its last valid row so that every process holds the same number (``state``:
    a ``PartialState`` or ``None`` for all rows)."""
    if state is None or n == 0:
        return torch.arange(n)
    per = -(-n // state.num_processes)
    start = min(n, state.process_index * per)
    rows = torch.arange(start, min(n, start + per))
    pad = per - len(rows)
    return torch.cat([rows, torch.full((pad,), n - 1, dtype=torch.long)]) if pad else rows


def shard_size(n: int, state: PartialState | None) -> int:
    """How many of :func:`shard_rows`' rows are this process's own (the rest is padding)."""
    if state is None or n == 0:
        return n
    per = -(-n // state.num_processes)
    start = min(n, state.process_index * per)
    return min(n, start + per) - start


def gather_rows(values: torch.Tensor, n: int, state: PartialState | None) -> torch.Tensor:
    """Every process's :func:`shard_rows` results ``[per, ...]``, back as ``[n, ...]`` in row
    order on every process (the padding rows dropped)."""
    if state is None:
        return values
    from accelerate.utils import gather

    return gather(values.contiguous())[:n]


FSDP_ADVICE = (
    "train with plain data parallel instead (torchrun / accelerate launch without --use_fsdp: the model is "
    "replicated, frozen, and DDP averages only the trained parameters' gradients, which are small), and load "
    "a model larger than one device with device_map='auto' (layers spread over devices, or offloaded to CPU / "
    "disk) in one process"
)


def fsdp_modules(model: torch.nn.Module) -> list[str]:
    """Names of the submodules of ``model`` that FSDP wrapped (``FullyShardedDataParallel`` or
    ``fully_shard``)."""
    kinds: list[type] = []
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        kinds.append(FullyShardedDataParallel)
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # pragma: no cover - torch < 2.6
            pass
        else:
            kinds.append(FSDPModule)
    return [name or type(model).__name__ for name, m in model.named_modules() if isinstance(m, tuple(kinds))]


def refuse_fsdp(model: torch.nn.Module, what: str = "training") -> None:
    """Refuse FSDP for the library's training loop, asked for through accelerate
    (``accelerate launch --use_fsdp``, ``ACCELERATE_USE_FSDP``) or by a model already wrapped.

    Tried on two gloo processes: a model wrapped with FSDP runs interventions correctly (its
    forward gathers the shards), but training does not: freezing the model changes flags of
    FSDP's flattened parameter views (``FullyShardedDataParallel``), and ``fully_shard``'s
    DTensor parameters cannot mix with the plain tensors of interventions; the data-parallel
    wrapper would also overwrite every process's shard with the main process's. On a CPU-only
    machine ``accelerate`` ignores the FSDP request and runs plain data parallel, silently."""
    from accelerate.utils import parse_flag_from_env

    wrapped = fsdp_modules(model)
    if parse_flag_from_env("ACCELERATE_USE_FSDP") or wrapped:
        how = (f"the model has FSDP-wrapped modules ({', '.join(wrapped[:3])})" if wrapped
               else "FSDP was asked for (ACCELERATE_USE_FSDP=true, as accelerate launch --use_fsdp sets)")
        raise ConfigError(f"{what}: FSDP is not supported: {how}. The library trains small modules (interventions, SAEs, "
                          f"codebooks, probes) on a frozen model, so there are no model gradients or optimizer state to "
                          f"shard; {FSDP_ADVICE}")
