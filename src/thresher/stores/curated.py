"""Curated shards: the selected pool rows, with selection columns, in rank order.

A curated directory holds ``part-NNNNN.arrow`` shards (Arrow IPC stream
format) with every column of the selected pool rows plus the selector's
columns (``rank``, ``score``, ``weight``, ``batch``, …), and a manifest naming
the selector, its parameters, the seed, the inputs' fingerprints and counts.
Rows appear in rank order, so a trainer that streams the shards in order sees
the selection's order (which matters for batch-mined shards).

Writing streams: each pool partition contributes its selected rows to a
staging file sorted by rank (one pass over the pool, one task per partition),
then output shards are cut from the staging files by rank range, a k-way
merge whose memory is bounded by one output shard. Neither the pool nor the
selection's rows are ever held whole.
"""

from __future__ import annotations

import functools
import itertools
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.exceptions import InputDataError, ParameterError
from thresher.stores.arrow_io import read_stream_shard, write_stream_shard
from thresher.stores.lock import locks_output
from thresher.stores.manifest import ShardInfo, check_artifact_files, prepare_output_dir, read_manifest, verify_shards, write_manifest

RANK_COLUMN = "rank"
_STAGING = ".staging"
_STAGE_RANK = "__thresher_rank"

Mapper = Callable[[Callable[..., Any], Iterable[Any]], Iterable[Any]]


def shard_name(index: int) -> str:
    return f"part-{index:05d}.arrow"


@dataclass(frozen=True)
class _StageTask:
    partition: int
    offsets: np.ndarray
    ranks: np.ndarray
    expected_ids: np.ndarray | None
    staging_dir: str


@locks_output("out")
def write_curated(
    out: str | Path,
    *,
    pool: Any,
    positions: Sequence[int] | np.ndarray,
    columns: Mapping[str, Any],
    selector: str,
    params: Mapping[str, Any],
    fingerprint: str,
    seed: int | None = None,
    inputs: Mapping[str, str] | None = None,
    summary: Mapping[str, Any] | None = None,
    expected_ids: np.ndarray | None = None,
    rows_per_shard: int | None = None,
    overwrite: bool = False,
    map_fn: Mapper = map,
    extra_rows: pa.Table | Iterable[pa.Table] | None = None,
    job: Mapping[str, Any] | None = None,
    attachments: Mapping[str, pa.Table] | None = None,
) -> CuratedShards:
    """Write the pool rows at ``positions`` (in rank order) with selection ``columns`` as curated shards.

    Parameters
    ----------
    out : path
        The output directory (made; refused if it holds another artefact).
    pool : thresher.stores.pool.Pool
        The pool the positions refer to (positions are global row offsets in
        pool partition order, which is also embedding-store order).
    positions : array of int, shape (n_selected,)
        Selected rows, best first. No duplicates.
    columns : mapping of name to array of length n_selected
        Selection columns in the same order (``score``, ``weight``, …). ``rank``
        (0 = best) is added unless given.
    expected_ids : array, optional
        The pool ids the caller believes sit at ``positions``; checked while
        reading, so a pool that changed since it was embedded is caught.
    map_fn : callable
        ``map``-like function used to run the per-partition staging step;
        jobs pass one that runs it on Dask.
    extra_rows : pyarrow.Table or iterable of pyarrow.Table, optional
        Rows that are not pool rows (SMOTE's synthetic rows), written after the
        selected pool rows with ranks ``n_selected``, ``n_selected + 1``, ….
        An iterable is consumed one table at a time while the shards are cut,
        so only one output shard of them is held.
        It must hold every selection column of ``columns`` (``rank`` excepted)
        and may hold pool columns; pool columns it lacks are null in its rows.
        With it, every field of the shards is nullable.
    job : mapping, optional
        How the Dask job went, stored as the manifest's ``job``: the stages pass
        a :class:`thresher.jobs.cluster.TaskRetries` (tasks, re-runs after lost
        workers). It is read when the manifest is written, after this
        function's own staging tasks ran, so it counts them too.
    attachments : mapping of file name to pyarrow.Table, optional
        Side tables written beside the shards (IPC stream, atomically, before
        the manifest), such as semantic dedup's ``removed.arrow``; listed in the
        manifest's ``attachments`` with their rows and checksums.
    """
    out = Path(out)
    positions = np.asarray(positions, dtype=np.int64)
    n_selected = len(positions)
    if rows_per_shard is None:
        from thresher.config import runtime_config

        rows_per_shard = runtime_config().partition_rows
    if rows_per_shard < 1:
        raise ParameterError(f"The 'rows_per_shard' parameter of write_curated must be >= 1; got {rows_per_shard}.")
    _check_positions(positions, pool.n_rows)
    selection = _selection_table(columns, n_selected)
    if expected_ids is not None and len(expected_ids) != n_selected:
        raise ValueError(f"expected_ids has {len(expected_ids)} entries for {n_selected} positions")
    extra = None if extra_rows is None else _ExtraRows(extra_rows, selection, pool)

    if prepare_output_dir(out, "curated", fingerprint, overwrite=overwrite) == "complete":
        return open_curated(out)
    staging = out / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for old in out.glob("part-*.arrow"):
        old.unlink()

    tasks = list(_stage_tasks(pool, positions, expected_ids, staging))
    staged = [p for p in map_fn(functools.partial(stage_partition, pool), tasks) if p is not None]
    shards = _merge_staged(out, [Path(p) for p in staged], selection, rows_per_shard, extra)
    attached = [_write_attachment(out, name, table) for name, table in (attachments or {}).items()]
    shutil.rmtree(staging, ignore_errors=True)

    body = {
        "selector": selector,
        "params": dict(params),
        "seed": seed,
        "inputs": dict(inputs or {}),
        "pool": pool.describe(),
        "n_selected": n_selected,
        "n_pool": pool.n_rows,
        "selection_columns": selection.column_names,
        "summary": dict(summary or {}),
    }
    if extra is not None:
        body["n_extra_rows"] = extra.num_rows
    if job is not None:
        body["job"] = dict(job)
    if attached:
        body["attachments"] = [asdict(a) for a in attached]
    write_manifest(out, "curated", fingerprint=fingerprint, body=body, shards=shards)
    return open_curated(out)


def _write_attachment(out: Path, name: str, table: pa.Table) -> ShardInfo:
    if Path(name).name != name or name.startswith(("part-", ".")) or name == "manifest.json":
        raise ParameterError(f"An attachment of write_curated must be a plain file name other than a shard's or the manifest's; got {name!r}.")
    write_stream_shard(out / name, table)
    return ShardInfo.of(out / name, table.num_rows)


def stage_partition(pool: Any, task: _StageTask) -> str | None:
    """Read one pool partition, keep its selected rows, sort them by rank, write a staging file."""
    table = pool.read_partition(task.partition)
    order = np.argsort(task.ranks, kind="stable")
    rows = table.take(pa.array(task.offsets[order]))
    if task.expected_ids is not None:
        got = rows.column("id").to_pylist()
        want = task.expected_ids[order].tolist()
        if got != want:
            bad = next(j for j, (a, b) in enumerate(zip(got, want)) if a != b)
            raise InputDataError(
                f"Pool partition {task.partition} has id {got[bad]!r} where the selection expects {want[bad]!r}: "
                "the pool changed since it was embedded; re-run the embedding."
            )
    rows = rows.append_column(_STAGE_RANK, pa.array(task.ranks[order], pa.int64()))
    path = Path(task.staging_dir) / f"stage-{task.partition:05d}.arrow"
    write_stream_shard(path, rows)
    return str(path)


def _stage_tasks(pool: Any, positions: np.ndarray, expected_ids: np.ndarray | None, staging: Path) -> Iterable[_StageTask]:
    bounds = np.concatenate([[0], np.cumsum([p.stop - p.start for p in pool.partitions])]).astype(np.int64)
    part_of = np.searchsorted(bounds, positions, side="right") - 1
    ranks = np.arange(len(positions), dtype=np.int64)
    order = np.argsort(part_of, kind="stable")
    cuts = np.searchsorted(part_of[order], np.arange(len(pool.partitions) + 1))
    for i in range(len(pool.partitions)):
        idx = order[cuts[i] : cuts[i + 1]]
        if len(idx) == 0:
            continue
        yield _StageTask(
            partition=i,
            offsets=positions[idx] - bounds[i],
            ranks=ranks[idx],
            expected_ids=None if expected_ids is None else np.asarray(expected_ids, dtype=object)[idx],
            staging_dir=str(staging),
        )


def _merge_staged(out: Path, staged: list[Path], selection: pa.Table, rows_per_shard: int, extra: _ExtraRows | None = None) -> list[ShardInfo]:
    tables = [read_stream_shard(p) for p in staged]
    rank_arrays = [t.column(_STAGE_RANK).to_numpy() for t in tables]
    n_selected = selection.num_rows
    shards = []
    for lo in itertools.count(0, rows_per_shard):
        if lo >= n_selected and (extra is None or extra.schema is None):
            break
        hi = lo + rows_per_shard
        shard = None
        if lo < n_selected:
            top = min(hi, n_selected)
            pieces = []
            for table, ranks in zip(tables, rank_arrays):
                a, b = np.searchsorted(ranks, [lo, top])
                if b > a:
                    pieces.append(table.slice(a, b - a))
            merged = pa.concat_tables(pieces, promote_options="permissive").combine_chunks()
            merged = merged.take(pc.sort_indices(merged.column(_STAGE_RANK))).drop_columns([_STAGE_RANK])
            shard = _attach_selection(merged, selection.slice(lo, top - lo))
        if extra is not None and extra.schema is not None:
            shard = _append_extra(shard, extra.schema, extra.take(hi - max(lo, n_selected)))
        if shard.num_rows == 0:  # the extra rows ended on a shard boundary
            break
        path = out / shard_name(len(shards))
        write_stream_shard(path, shard)
        shards.append(ShardInfo.of(path, shard.num_rows))
    return shards


class _ExtraRows:
    """``extra_rows`` (one table or an iterable of tables) laid out as curated rows, handed out a shard at a time.

    The first table is laid out (and its columns checked) on construction, before anything is written.
    """

    def __init__(self, extra_rows: pa.Table | Iterable[pa.Table], selection: pa.Table, pool: Any):
        if not isinstance(extra_rows, pa.Table) and not (isinstance(extra_rows, Iterable) and not isinstance(extra_rows, (str, bytes, Mapping))):
            raise ParameterError(f"The 'extra_rows' parameter of write_curated must be a pyarrow.Table or an iterable of them; got {type(extra_rows).__name__}.")
        self._tables = iter([extra_rows] if isinstance(extra_rows, pa.Table) else extra_rows)
        self._selection, self._pool = selection, pool
        self.num_rows = 0  # rows laid out so far (all of them once the shards are written)
        self.schema: pa.Schema | None = None
        self._buffer = self._next()
        self.schema = None if self._buffer is None else self._buffer.schema

    def _next(self) -> pa.Table | None:
        table = next(self._tables, None)
        if table is None:
            return None
        laid = _extra_table(table, self._selection, self._pool, first_rank=self._selection.num_rows + self.num_rows)
        if self.schema is not None and laid.schema != self.schema:
            raise ParameterError(f"The tables of 'extra_rows' given to write_curated differ in schema: {laid.schema} after {self.schema}.")
        self.num_rows += laid.num_rows
        return laid

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows (fewer once the tables run out)."""
        parts = []
        while n > 0 and self._buffer is not None:
            part = self._buffer.slice(0, n)
            parts.append(part)
            n -= part.num_rows
            self._buffer = self._buffer.slice(part.num_rows) if self._buffer.num_rows > part.num_rows else self._next()
        return pa.concat_tables(parts) if parts else self.schema.empty_table()


def _extra_table(extra_rows: pa.Table, selection: pa.Table, pool: Any, first_rank: int | None = None) -> pa.Table:
    """``extra_rows`` laid out as a curated shard of the pool: pool columns (null where absent), then selection columns.

    The result's schema is the shards' schema (every field nullable); ranks continue after the selected rows
    (from ``first_rank``, default ``selection.num_rows``).
    """
    if not isinstance(extra_rows, pa.Table):
        raise ParameterError(f"The 'extra_rows' parameter of write_curated must be a pyarrow.Table; got {type(extra_rows).__name__}.")
    wanted = [c for c in selection.column_names if c != RANK_COLUMN]
    missing = [c for c in wanted if c not in extra_rows.column_names]
    if missing:
        raise ParameterError(f"The 'extra_rows' of write_curated lack the selection columns {missing}; they need all of {wanted}.")
    pool_fields = [pa.field("id", pool.id_type)] + [pool.schema.field(c) for c in pool.column_names]
    unknown = [c for c in extra_rows.column_names if c not in wanted and c != RANK_COLUMN and c not in {f.name for f in pool_fields}]
    if unknown:
        raise ParameterError(f"The 'extra_rows' of write_curated hold columns {unknown} that are neither selection columns {wanted} nor pool columns.")
    n = extra_rows.num_rows
    columns, fields = [], []
    for f in pool_fields:
        taken = f.name in extra_rows.column_names and f.name not in selection.column_names
        columns.append(extra_rows.column(f.name).cast(f.type) if taken else pa.nulls(n, f.type))
        fields.append(pa.field(f"{f.name}_pool" if f.name in selection.column_names else f.name, f.type))
    first_rank = selection.num_rows if first_rank is None else first_rank
    ranks = pa.array(np.arange(first_rank, first_rank + n, dtype=np.int64))
    for name in selection.column_names:
        source = extra_rows.column(name) if name in extra_rows.column_names else ranks
        kind = selection.column(name).type
        kind = source.type if pa.types.is_null(kind) else kind  # an all-null selection column takes the extra rows' type
        columns.append(source.cast(kind))
        fields.append(pa.field(name, kind))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _append_extra(shard: pa.Table | None, schema: pa.Schema, part: pa.Table) -> pa.Table:
    """Cast the pool rows of a shard to the shards' ``schema`` and append the extra rows ``part``."""
    if shard is None:
        return part
    columns = [shard.column(f.name).cast(f.type) for f in schema]
    if shard.num_columns != len(columns):
        raise ValueError(f"curated shard columns {shard.column_names} do not match the extra rows' {schema.names}")
    pooled = pa.Table.from_arrays(columns, schema=schema)
    return pa.concat_tables([pooled, part]) if part.num_rows else pooled


def _attach_selection(rows: pa.Table, selection: pa.Table) -> pa.Table:
    for name in selection.column_names:
        if name in rows.column_names:
            rows = rows.rename_columns([f"{c}_pool" if c == name else c for c in rows.column_names])
        rows = rows.append_column(name, selection.column(name))
    return rows


def _selection_table(columns: Mapping[str, Any], n: int) -> pa.Table:
    arrays = {}
    if RANK_COLUMN not in columns:
        arrays[RANK_COLUMN] = pa.array(np.arange(n, dtype=np.int64))
    for name, values in columns.items():
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(_as_list_or_array(values))
        if len(array) != n:
            raise ValueError(f"selection column {name!r} has {len(array)} values for {n} selected rows")
        arrays[name] = array
    return pa.table(arrays)


def _as_list_or_array(values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.ndim > 1:
        return list(values)
    return values


def _check_positions(positions: np.ndarray, n_rows: int) -> None:
    if positions.ndim != 1:
        raise ValueError(f"positions must be one-dimensional; got shape {positions.shape}")
    if len(positions) and (positions.min() < 0 or positions.max() >= n_rows):
        raise ParameterError(f"Selected positions must lie in [0, {n_rows}); got values from {positions.min()} to {positions.max()}.")
    if len(np.unique(positions)) != len(positions):
        raise ParameterError("Selected positions contain duplicates: a pool row can be selected at most once.")


class CuratedShards:
    """A finished curated-shard directory, opened read-only (memory-mapped)."""

    def __init__(self, path: str | Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        check_artifact_files(self.path, manifest)  # no shard or attachment name may lead outside the directory
        self.shards = [ShardInfo(**s) for s in manifest["shards"]]

    def __repr__(self) -> str:
        return f"CuratedShards({str(self.path)!r}, selector={self.manifest['selector']!r}, n_rows={self.n_rows})"

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def files(self) -> list[str]:
        """Shard paths in order: pass them to ``datasets.load_dataset("arrow", data_files=...)``."""
        return [str(self.path / s.file) for s in self.shards]

    def tables(self) -> Iterable[pa.Table]:
        for f in self.files:
            yield read_stream_shard(f)

    def to_table(self) -> pa.Table:
        tables = list(self.tables())
        return pa.concat_tables(tables) if tables else pa.table({})

    def to_pyarrow_dataset(self):
        """A ``pyarrow.dataset.Dataset`` over the memory-mapped shards.

        ``pyarrow.dataset.dataset(path)`` itself only discovers IPC *file*
        format files, so hand it the opened stream shards instead.
        """
        import pyarrow.dataset as ds

        return ds.dataset(list(self.tables()))

    def to_hf_dataset(self):
        """A ``datasets.Dataset`` memory-mapping the shards with no copy."""
        import datasets

        parts = [datasets.Dataset.from_file(f) for f in self.files]
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def open_curated(path: str | Path, *, verify: bool = False) -> CuratedShards:
    """Open finished curated shards; ``verify`` re-checks every shard's checksum."""
    manifest = read_manifest(path, "curated")
    if verify:
        verify_shards(path, manifest)
    return CuratedShards(path, manifest)
