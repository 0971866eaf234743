"""The DAS Trainer's source cache: every training example's source activations, in memory or
memory-mapped from Arrow files on disk.

Sources are fixed inputs, so when the wrapped model is frozen the Trainer computes their
activations at the intervention sites once and every step reads its rows back. That cache is
``n_examples x units x width`` values per intervention; when it would not fit (see
:func:`choose_storage`) it goes to disk:

* **memory**: one ``[n, units, width]`` tensor per intervention on the training device; under a
  launch each process computes its contiguous share of the rows and the shares are all-gathered,
  so every process holds the whole cache.
* **disk**: each process computes the same share and writes it, one batch at a time, with
  ``datasets``' ``ArrowWriter`` to ``sources-<rank>-of-<world>.arrow`` in one folder (the main
  process's). Every process then memory-maps all the files (``datasets.Dataset.from_file``,
  concatenated in row order) and each step reads only its batch's rows. The data-parallel
  sampler hands every process rows from the whole dataset, so each process reads from every
  process's file; what it holds in memory is one batch, whatever the dataset size.

Values are stored bit for bit (dtypes Arrow lacks, such as bfloat16, as same-width integers),
so training reads exactly what the in-memory cache would hold.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from accelerate import PartialState

STORAGES = ("auto", "memory", "disk")
#: the share of the free memory (device memory for a cache on an accelerator) that an in-memory
#: cache may take, over all the processes of this machine, before ``"auto"`` puts it on disk
MEMORY_FRACTION = 0.5

# dtypes Arrow stores as they are; others go through a same-width integer view
_NATIVE = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16"}
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def row_bytes(reps: list) -> int:
    """Bytes one example takes in the cache, from one batch of ``collect_source_representations``."""
    return sum(r[0].numel() * r.element_size() for r in reps if r is not None and len(r))


def free_memory(device: torch.device) -> int:
    """Bytes free where an in-memory cache would live: the accelerator's free memory, or the
    machine's available RAM (``psutil``, which ``accelerate`` depends on)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def choose_storage(storage: str, n_rows: int, per_row: int, device: torch.device, local_processes: int = 1) -> str:
    """``"memory"`` or ``"disk"``: as asked, or for ``"auto"``, disk when the whole cache on every
    process of this machine (``n_rows x per_row x local_processes`` bytes) would take more than
    :data:`MEMORY_FRACTION` of :func:`free_memory`."""
    if storage != "auto":
        return storage
    sharing = 1 if device.type == "cuda" else max(1, local_processes)  # the processes of a machine share its RAM
    need = n_rows * per_row * sharing
    return "disk" if need > MEMORY_FRACTION * free_memory(device) else "memory"


class MemorySourceCache:
    """The cache as one ``[n, units, width]`` tensor per intervention (``None`` for those that
    take no source)."""

    storage = "memory"

    def __init__(self, tensors: list):
        self.tensors = tensors

    def __len__(self) -> int:
        return next((len(t) for t in self.tensors if t is not None), 0)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors if t is not None)

    def take(self, idx: torch.Tensor) -> list:
        return [None if t is None else t[idx.to(t.device)] for t in self.tensors]


class DiskSourceCache:
    """The cache as Arrow files in ``folder``, memory-mapped: :meth:`take` reads one batch's rows."""

    storage = "disk"

    def __init__(self, folder: Path, files: list[Path], slots: list):
        from datasets import Dataset, concatenate_datasets

        self.folder = Path(folder)
        self.files = list(files)
        self.slots = slots  # per intervention: None, or its column, row shape and dtype
        self.dataset = concatenate_datasets([Dataset.from_file(str(f)) for f in self.files]).with_format("arrow")
        self.temporary = False
        self._finalizer = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def nbytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)

    def take(self, idx: torch.Tensor) -> list:
        import numpy as np

        table = self.dataset[idx.tolist()] if any(self.slots) else None
        out = []
        for s in self.slots:
            if s is None:
                out.append(None)
                continue
            values = table.column(s["column"]).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            t = torch.from_numpy(np.array(values))  # a copy of this batch's rows only
            out.append(t.view(getattr(torch, s["dtype"])).reshape(len(idx), *s["shape"]))
        return out

    def remove_when_collected(self, owner) -> None:
        """Delete the folder when ``owner`` (the Trainer that made it) is garbage-collected."""
        self._finalizer = weakref.finalize(owner, shutil.rmtree, str(self.folder), True)


def _arrow_features(first: list):
    from datasets import Features, List, Value

    feats, slots = {}, []
    for j, r in enumerate(first):
        if r is None:
            slots.append(None)
            continue
        name = f"intervention_{j}"
        width = r[0].numel()
        value = _NATIVE.get(r.dtype) or str(_BITS[r.element_size()]).removeprefix("torch.")
        feats[name] = List(Value(value), length=width)
        slots.append({"column": name, "shape": list(r.shape[1:]), "dtype": str(r.dtype).removeprefix("torch.")})
    return Features(feats), slots


def _arrow_table(reps: list, slots: list):
    import pyarrow as pa

    cols = {}
    for r, s in zip(reps, slots):
        if s is None:
            continue
        flat = r.detach().to("cpu").reshape(len(r), -1).contiguous()
        if flat.dtype not in _NATIVE:
            flat = flat.view(_BITS[flat.element_size()])
        cols[s["column"]] = pa.FixedSizeListArray.from_arrays(pa.array(flat.numpy().reshape(-1)), flat.shape[1])
    return pa.table(cols)


def cache_folder(folder: str | os.PathLike | None, state: PartialState | None) -> tuple[Path, bool]:
    """The folder every process writes its file to: ``folder``, or a new temporary folder made by
    the main process (returned with ``True``: the caller removes it)."""
    if folder is not None:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path, False
    main = state is None or state.is_main_process
    made = [tempfile.mkdtemp(prefix="pyvene_like_sources_") if main else None]
    if state is not None:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(made)
    return Path(made[0]), True


def write_disk_cache(batches: Iterable[list], folder: Path, n: int, own_rows: int,
                     state: PartialState | None) -> DiskSourceCache:
    """This process's batches (lists of per-intervention tensors, its rows in order; rows past
    ``own_rows`` are padding and are dropped) to its Arrow file in ``folder``, one batch in memory
    at a time; after every process has written, all the files memory-mapped as one cache of ``n`` rows."""
    from datasets.arrow_writer import ArrowWriter

    world, rank = (state.num_processes, state.process_index) if state is not None else (1, 0)
    writer = features = slots = None
    own = folder / f"sources-{rank:05d}-of-{world:05d}.arrow"
    left = own_rows
    try:
        for reps in batches:
            if writer is None:
                features, slots = _arrow_features(reps)
                writer = ArrowWriter(features=features, path=str(own))
            rows = min(left, next(len(r) for r in reps if r is not None) if any(r is not None for r in reps) else 0)
            if rows:
                table = _arrow_table([None if r is None else r[:rows] for r in reps], slots)
                writer.write_table(table.cast(features.arrow_schema))
                left -= rows
        writer.finalize()
    finally:
        if writer is not None:
            writer.close()
    if state is not None:
        state.wait_for_everyone()
    files = [folder / f"sources-{r:05d}-of-{world:05d}.arrow" for r in range(world)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise ConfigError(
            f"source cache: {missing[0]} (written by another process) is not visible here: the processes run "
            f"on machines that do not share {folder}; give the Trainer source_cache_dir= on a shared filesystem"
        )
    cache = DiskSourceCache(folder, files, slots)
    if len(cache) != n:
        raise ConfigError(f"source cache: {folder} holds {len(cache)} rows for {n} training examples")
    return cache


def build_source_cache(batches: Iterable[list], n: int, own_rows: int, share_rows: int, storage: str, *,
                       device: torch.device,
                       state: PartialState | None, folder: str | os.PathLike | None,
                       gather: Callable[[torch.Tensor], torch.Tensor], agree: Callable[[int], int],
                       local_processes: int = 1) -> MemorySourceCache | DiskSourceCache:
    """The cache of ``n`` rows in ``storage`` (``"auto"``, ``"memory"``, ``"disk"``).

    ``batches`` yields this process's ``share_rows`` rows (its ``own_rows``, then any padding that
    makes every process's share the same length), a batch at a time, as per-intervention tensors;
    ``gather`` puts one tensor of this process's share back as all ``n`` rows (memory);
    ``agree(flag)`` returns the largest flag over the processes, so that ``"auto"`` makes the
    same choice everywhere (the free memory may differ between machines)."""
    it = iter(batches)
    first = next(it)
    if all(r is None for r in first):  # no intervention takes a source: nothing to store
        storage = "memory"
    choice = choose_storage(storage, n, row_bytes(first), device, local_processes)
    if storage == "auto":
        choice = "disk" if agree(int(choice == "disk")) else "memory"
    if choice == "memory":  # filled in place: the cache and one batch at the peak, not the cache twice
        bufs = [None if r is None else r.new_empty((share_rows, *r.shape[1:])) for r in first]
        at = 0
        for reps in _chain(first, it):
            size = next((len(r) for r in reps if r is not None), 0)
            for buf, r in zip(bufs, reps):
                if buf is not None:
                    buf[at:at + size] = r
            at += size
        return MemorySourceCache([None if b is None else gather(b) for b in bufs])
    path, temporary = cache_folder(folder, state)
    cache = write_disk_cache(_chain(first, it), path, n, own_rows, state)
    cache.temporary = temporary
    return cache


def _chain(first: list, rest: Iterable[list]) -> Iterable[list]:
    yield first
    yield from rest
