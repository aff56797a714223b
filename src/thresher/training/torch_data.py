"""Training-side reading: curated shards as PyTorch datasets.

:class:`CuratedShardDataset` streams a curated directory (see
:mod:`thresher.stores.curated`) into a ``torch.utils.data.DataLoader``: the
shards are memory-mapped and read ``block_rows`` rows at a time, in stored
(rank) order, so memory stays bounded by one block whatever the selection's
size. :class:`CuratedShardMapDataset` is the random-access counterpart.

Work is split between DataLoader workers (``get_worker_info``) and
distributed ranks (``rank``/``world_size``) so that every row is read exactly
once per epoch:

- **Row mode** (default): the stored order is cut into one contiguous row range
  per (rank, worker); with one rank and ``num_workers=0`` the rows come in
  exact stored order. With ``num_workers > 1`` each worker streams its own
  range and the DataLoader interleaves the workers' outputs, so the global
  order is no longer the stored one.
- **Batch mode** (``batch_column="batch"``): each item is one whole stored batch
  (the rows sharing a ``batch`` value, e.g. a B3 batch of Thirukovalluru et
  al. 2025, whose in-batch negatives only work if the batch reaches the loss
  intact). Batches are dealt round-robin: batch ``u`` goes to rank
  ``u % world_size``, and within a rank to worker ``(u // world_size) %
  num_workers``. The DataLoader (``batch_size=None``, its default in-order
  fetching) takes items from its workers in the same round-robin, so each rank
  sees its batches in stored order with any number of workers, and at step
  ``t`` the ranks together hold stored batches ``t·R … t·R + R - 1``.

Shuffling is off by default (batch-mined shards must stream in stored order).
``shuffle=True`` permutes, with a generator seeded by ``(seed, epoch)``, the
order of ``block_rows``-row blocks and the rows inside each block (row mode) or
the order of whole batches (batch mode); call :meth:`set_epoch` before each
epoch, as with ``DistributedSampler`` (with ``persistent_workers=True`` the
workers keep the epoch they started with).

Columns: ``columns=`` picks them (default: all). Numbers become tensors of
their stored dtype; a list column of numbers (``embedding``) becomes a float
tensor of shape ``(dim,)`` per row or ``(n, dim)`` per batch; strings and
anything else stay Python objects (lists in batch mode). ``weight`` is always
exposed: the stored ``weight`` column (InfoBatch plans, weighted selections)
or, when the shards have none, ``default_weight`` (1.0: a selection that
assigns no weights counts every row once, which is the unweighted loss); pass
``default_weight=None`` to refuse shards without the column.

torch is imported only when one of the dataset classes is first used, so
``thresher.stores`` stays importable without paying for torch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.exceptions import InputDataError, ParameterError
from thresher.stores.arrow_io import read_stream_shard
from thresher.stores.curated import open_curated

__all__ = ["CuratedShardDataset", "CuratedShardMapDataset", "collate"]

WEIGHT = "weight"


class _Shards:
    """The shards of a curated directory, their row offsets and the columns to read; picklable (paths only)."""

    def __init__(self, path: str | Path, columns: Sequence[str] | None, weight_column: str | None, default_weight: float | None):
        curated = open_curated(path)
        self.path = str(curated.path)
        self.files = curated.files
        rows = np.array([s.rows for s in curated.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self.n_rows = int(self.offsets[-1])
        schema = _schema(self.files[0]) if self.files else pa.schema([])
        available = schema.names
        if columns is None:
            columns = list(available)
        elif isinstance(columns, str):
            raise ParameterError(f"The 'columns' parameter must be a list of column names; got the string {columns!r}.")
        missing = [c for c in columns if c not in available]
        if missing:
            raise InputDataError(f"Column {missing[0]!r} is not in the curated shards {self.path}; they have columns {available}.")
        self.columns = list(dict.fromkeys(columns))
        self.weight_column = weight_column
        self.default_weight = default_weight
        self.stored_weight = weight_column is not None and weight_column in available
        if weight_column is not None and not self.stored_weight and default_weight is None:
            raise InputDataError(
                f"The curated shards {self.path} have no {weight_column!r} column and 'default_weight' is None; "
                f"they have columns {available}."
            )
        read = list(self.columns)
        if self.stored_weight and weight_column not in read:
            read.append(weight_column)
        self.read_columns = read
        self._open: tuple[int, pa.Table] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": None}  # memory maps are reopened in each DataLoader worker

    def table(self, shard: int) -> pa.Table:
        """Shard ``shard``'s columns, memory-mapped; the last one opened is kept open, as blocks of one shard follow each other."""
        if self._open is None or self._open[0] != shard:
            self._open = (shard, read_stream_shard(self.files[shard]).select(self.read_columns))
        return self._open[1]

    def rows(self, start: int, stop: int) -> pa.Table:
        """Global rows ``[start, stop)`` as one table (zero-copy slices of the memory-mapped shards)."""
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces = []
        shard = first
        while start < stop:
            lo = start - int(self.offsets[shard])
            n = min(stop, int(self.offsets[shard + 1])) - start
            pieces.append(self.table(shard).slice(lo, n))
            start += n
            shard += 1
        return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)

    def to_torch(self, table: pa.Table) -> dict[str, Any]:
        """Columns of ``table`` converted for training (one value per row), plus ``weight``."""
        import torch

        out = {name: _column_to_torch(table.column(name), name, self.path) for name in self.columns}
        if self.weight_column is not None:
            if self.stored_weight:
                weight = out.get(self.weight_column)
                if weight is None:
                    weight = _column_to_torch(table.column(self.weight_column), self.weight_column, self.path)
            else:
                weight = torch.full((table.num_rows,), float(self.default_weight), dtype=torch.float32)
            out[WEIGHT] = weight
        return out

    def batch_runs(self, batch_column: str) -> tuple[np.ndarray, np.ndarray]:
        """(starts, stops) of the stored batches: maximal runs of equal ``batch_column`` values, in stored order.

        Reads only that column, memory-mapped, shard by shard; memory is one
        entry per batch. A batch value that comes back after another one is
        refused: the shards are then not in batch order.
        """
        starts: list[int] = []
        values: list[Any] = []
        for shard, file in enumerate(self.files):
            column = read_stream_shard(file).column(batch_column)
            if column.null_count:
                raise InputDataError(f"The {batch_column!r} column of {file} has null values; every row needs a batch.")
            labels = column.to_numpy()
            if len(labels) == 0:
                continue
            cut = np.flatnonzero(labels[1:] != labels[:-1]) + 1
            local = np.concatenate([[0], cut])
            base = int(self.offsets[shard])
            for j, at in enumerate(local):
                value = labels[at].item() if isinstance(labels[at], np.generic) else labels[at]
                if j == 0 and values and values[-1] == value:
                    continue  # the batch goes on from the previous shard
                starts.append(base + int(at))
                values.append(value)
        seen: dict[Any, int] = {}
        for i, value in enumerate(values):
            if value in seen:
                where = starts[i]
                shard = int(np.searchsorted(self.offsets, where, side="right")) - 1
                raise InputDataError(
                    f"Batch {value!r} of column {batch_column!r} starts again at row {where - int(self.offsets[shard])} of "
                    f"{self.files[shard]} after other batches: the shards are not grouped by batch."
                )
            seen[value] = i
        starts_arr = np.array(starts, dtype=np.int64)
        stops_arr = np.append(starts_arr[1:], self.n_rows).astype(np.int64)
        return starts_arr, stops_arr


def _schema(file: str) -> pa.Schema:
    return read_stream_shard(file).schema


def _column_to_torch(column: pa.ChunkedArray, name: str, where: str) -> Any:
    """Numbers → tensor (n,); fixed-size or equal-length lists of numbers → tensor (n, dim); anything else → list.

    Nulls: NaN in float columns, refused in integer and boolean ones, None in lists.
    """
    import torch

    kind = column.type
    if _is_number(kind):
        if column.null_count and not pa.types.is_floating(kind):
            raise InputDataError(
                f"The {kind} column {name!r} of the curated shards {where} has null values, which a tensor cannot hold; "
                "leave it out with 'columns'."
            )
        if column.null_count:  # a float column's nulls (SMOTE's gap of real rows) become NaN
            return torch.from_numpy(column.to_numpy().astype(kind.to_pandas_dtype(), copy=True))
        return torch.from_numpy(np.array(column.to_numpy(), copy=True))  # a copy: the mapped buffers are read-only
    if (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) and _is_number(kind.value_type):
        array = column.combine_chunks()
        if array.null_count == 0 and len(array):
            lengths = np.asarray(array.value_lengths()) if not pa.types.is_fixed_size_list(kind) else None
            if lengths is None or (lengths == lengths[0]).all():
                flat = array.flatten().to_numpy()
                return torch.from_numpy(np.array(flat.reshape(len(array), -1), copy=True))
        return [None if v is None else torch.tensor(v) for v in array.to_pylist()]
    return column.to_pylist()


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _row(values: dict[str, Any], i: int) -> dict[str, Any]:
    import torch

    return {k: (v[i].clone() if isinstance(v, torch.Tensor) else v[i]) for k, v in values.items()}


def _check_split(rank: int, world_size: int, block_rows: int) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ParameterError(f"The 'world_size' parameter must be an int >= 1; got {world_size!r}.")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ParameterError(f"The 'rank' parameter must be an int in [0, world_size={world_size}); got {rank!r}.")
    if not isinstance(block_rows, int) or block_rows < 1:
        raise ParameterError(f"The 'block_rows' parameter must be an int >= 1; got {block_rows!r}.")


def _row_segments(n_rows: int, block_rows: int, rng: np.random.Generator | None) -> list[tuple[int, int]]:
    """The epoch's order as (start, stop) row segments: the whole range, or shuffled blocks."""
    if rng is None:
        return [(0, n_rows)] if n_rows else []
    starts = np.arange(0, n_rows, block_rows, dtype=np.int64)
    return [(int(s), int(min(s + block_rows, n_rows))) for s in starts[rng.permutation(len(starts))]]


def _take_virtual(segments: list[tuple[int, int]], lo: int, hi: int) -> Iterator[tuple[int, int, int, int]]:
    """The pieces of virtual rows ``[lo, hi)`` of the concatenated segments: (segment index, start, piece lo, piece hi)."""
    at = 0
    for k, (start, stop) in enumerate(segments):
        n = stop - start
        a, b = max(lo, at), min(hi, at + n)
        if a < b:
            yield k, start, a - at, b - at
        at += n
        if at >= hi:
            break


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate rows of :class:`CuratedShardDataset`: stack tensors of one shape, keep anything else as a list.

    Unlike ``default_collate`` it accepts columns of nested or ragged values
    (chat ``messages``, variable-length lists), which stay lists.
    """
    import torch

    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


class _StreamBase:
    """The torch-free body of :class:`CuratedShardDataset`."""

    def __init__(
        self,
        path: str | Path,
        *,
        columns: Sequence[str] | None = None,
        batch_column: str | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_uneven: bool = False,
        block_rows: int = 1024,
        weight_column: str | None = WEIGHT,
        default_weight: float | None = 1.0,
    ):
        _check_split(rank, world_size, block_rows)
        self.shards = _Shards(path, columns, weight_column, default_weight)
        if batch_column is not None and self.shards.files and batch_column not in _schema(self.shards.files[0]).names:
            raise InputDataError(f"The 'batch_column' {batch_column!r} is not a column of the curated shards {self.shards.path}.")
        self.batch_column = batch_column
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_uneven = bool(drop_uneven)
        self.block_rows = block_rows
        self.epoch = 0
        self._runs = self.shards.batch_runs(batch_column) if batch_column is not None else None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle the next iteration uses (no effect without ``shuffle``)."""
        self.epoch = int(epoch)

    @property
    def n_rows(self) -> int:
        return self.shards.n_rows

    @property
    def n_batches(self) -> int | None:
        """Stored batches in batch mode (None in row mode)."""
        return None if self._runs is None else len(self._runs[0])

    def __len__(self) -> int:
        """Items this rank yields per epoch (all its workers together): rows, or batches in batch mode."""
        if self._runs is None:
            lo, hi = _share(self.n_rows, self.rank, self.world_size, self.n_rows // self.world_size if self.drop_uneven else None)
            return hi - lo
        total = len(self._runs[0])  # dealt round-robin
        if self.drop_uneven:
            return total // self.world_size
        return total // self.world_size + (1 if self.rank < total % self.world_size else 0)

    def _rng(self) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None

    def _consumer(self) -> tuple[int, int]:
        """(this worker's index, workers per rank) from the DataLoader's worker info."""
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, n_workers = self._consumer()
        if self._runs is None:
            return self._iter_rows(worker, n_workers)
        return self._iter_batches(worker, n_workers)

    def _iter_rows(self, worker: int, n_workers: int) -> Iterator[dict[str, Any]]:
        segments = _row_segments(self.n_rows, self.block_rows, self._rng())
        per_rank = self.n_rows // self.world_size if self.drop_uneven else None
        lo, hi = _share(self.n_rows, self.rank, self.world_size, per_rank)
        lo, hi = lo + (hi - lo) * worker // n_workers, lo + (hi - lo) * (worker + 1) // n_workers
        for k, start, a, b in _take_virtual(segments, lo, hi):
            for c in range(a, b, self.block_rows):
                d = min(c + self.block_rows, b)
                if not self.shuffle:
                    table = self.shards.rows(start + c, start + d)
                else:  # a shuffled block's own row order, the same in every worker and rank that reads part of it
                    block = self.shards.rows(*segments[k])
                    inside = np.random.default_rng([self.seed, self.epoch, start]).permutation(block.num_rows)
                    table = block.take(pa.array(inside[c:d]))
                values = self.shards.to_torch(table)
                for i in range(table.num_rows):
                    yield _row(values, i)

    def _iter_batches(self, worker: int, n_workers: int) -> Iterator[dict[str, Any]]:
        starts, stops = self._runs
        order = np.arange(len(starts))
        rng = self._rng()
        if rng is not None:
            order = rng.permutation(order)
        if self.drop_uneven:
            order = order[: len(order) - len(order) % self.world_size]
        mine = order[self.rank :: self.world_size][worker::n_workers]
        for u in mine:
            yield self.shards.to_torch(self.shards.rows(int(starts[u]), int(stops[u])))


def _share(n: int, rank: int, world_size: int, per_rank: int | None) -> tuple[int, int]:
    """Rank ``rank``'s contiguous range of ``n`` rows: equal sizes within one row, or exactly ``per_rank`` each."""
    if per_rank is not None:
        return rank * per_rank, (rank + 1) * per_rank
    return rank * n // world_size, (rank + 1) * n // world_size


class _MapBase:
    """The torch-free body of :class:`CuratedShardMapDataset`."""

    def __init__(self, path: str | Path, *, columns: Sequence[str] | None = None, weight_column: str | None = WEIGHT,
                 default_weight: float | None = 1.0):
        self.shards = _Shards(path, columns, weight_column, default_weight)

    def __len__(self) -> int:
        return self.shards.n_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = self.shards.n_rows
        if not isinstance(index, (int, np.integer)) or not -n <= index < n:
            raise IndexError(f"row {index!r} is out of range for curated shards of {n} rows")
        index = int(index) % n
        shard = int(np.searchsorted(self.shards.offsets, index, side="right")) - 1
        return _row(self.shards.to_torch(self.shards.table(shard).slice(index - int(self.shards.offsets[shard]), 1)), 0)


@functools.cache
def _torch_classes() -> dict[str, type]:
    from torch.utils.data import Dataset, IterableDataset

    class CuratedShardDataset(_StreamBase, IterableDataset):
        """Curated shards streamed in stored order (an ``IterableDataset``; see the module docstring).

        Parameters
        ----------
        path : path
            A finished curated directory (``open_curated``).
        columns : list of str, optional
            Columns to yield (default: all). ``weight`` is added.
        batch_column : str, optional
            Yield whole stored batches (rows sharing this column's value, which
            must be contiguous) instead of rows; use ``DataLoader(batch_size=None)``.
        shuffle : bool, default False
            Seeded per-epoch shuffle of row blocks and rows within them, or of whole batches.
        seed : int, default 0
        rank, world_size : int, default 0 and 1
            This process's distributed rank and the number of ranks.
        drop_uneven : bool, default False
            Give every rank exactly ``n // world_size`` rows (batches), dropping
            the last ``n % world_size``, so ranks take equal step counts.
        block_rows : int, default 1024
            Rows converted at once (and the shuffle's block size).
        weight_column : str or None, default "weight"
            The stored column exposed as ``weight``; None leaves ``weight`` out.
        default_weight : float or None, default 1.0
            ``weight`` of every row when the shards have no such column; None refuses such shards.
        """

    class CuratedShardMapDataset(_MapBase, Dataset):
        """Random access to curated rows: ``len`` and ``dataset[i]`` in stored order (a map-style ``Dataset``).

        Takes ``path``, ``columns``, ``weight_column`` and ``default_weight`` as
        :class:`CuratedShardDataset`; the shard last read stays memory-mapped (random
        access across many shards reopens them, which costs a file open each).
        """

    classes = {"CuratedShardDataset": CuratedShardDataset, "CuratedShardMapDataset": CuratedShardMapDataset}
    for name, cls in classes.items():
        cls.__module__ = __name__
        cls.__qualname__ = name  # so pickle (DataLoader workers started by spawn) finds it here
    return classes


def __getattr__(name: str) -> Any:
    if name in ("CuratedShardDataset", "CuratedShardMapDataset"):
        return _torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
