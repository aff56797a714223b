"""Bring your own embeddings: ids and vectors from Parquet, Arrow IPC or ``.npy`` files into an embedding store.

People with millions of rows embed once on accelerators, elsewhere, and
select many times here. :func:`import_embeddings` turns their files into a
store with the layout and manifest ``thresher embed`` writes (Arrow IPC stream
shards of ``id`` + ``embedding``, manifest last), so every later stage reads it
unchanged:

* **Parquet** and **Arrow IPC** (file or stream format) files with an id column
  and a vector column, a ``list<float>`` or a ``fixed_size_list<float, dim>``
  (float16, float32 or float64);
* **.npy** arrays of shape (n, dim), with their ids in another file: a Parquet,
  Arrow or JSON Lines file (its id column), an ``.npy`` of ids, or a text file
  of one id a line. Ids files are read in order, as one sequence beside the
  vector files read in order.

Memory stays bounded whatever the size: Parquet and Arrow files are read in
record batches, ``.npy`` files memory-mapped and read in slices, ids in
chunks; a shard's rows are the largest thing held. Duplicate ids are found
from 8-byte keys (:func:`thresher.stores.ids.first_duplicate`), never a set of
all ids.

What the vectors are is recorded as the user states it — model name,
pooling, and whether the rows are L2-normalised (checked when stated: a store
marked normalised must hold unit vectors, since an index over it then uses
inner product as cosine; detected when not stated). ``normalize=True``
normalises on import. The source files' sizes, modification times and content
hashes are recorded, as pool files are for embedded stores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.exceptions import InputDataError, ParameterError
from thresher.stores.embedding_store import EmbeddingStore, StoreDtype, finalize_embedding_store, open_embedding_store, write_embedding_shard
from thresher.stores.ids import first_duplicate, id_keys, ids_to_numpy, store_ids_at
from thresher.stores.lock import locks_output

IMPORT_VERSION = 1

_VECTOR_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow", ".npy": "npy"}
_ID_FORMATS = {**_VECTOR_FORMATS, ".jsonl": "jsonl", ".txt": "text"}
_FLOATS = {"halffloat": "float16", "float": "float32", "double": "float64", "float16": "float16", "float32": "float32", "float64": "float64"}
# how far a norm may be from 1 in a row stated to be L2-normalised: a float16 element carries ~1e-3 relative error
_UNIT_TOLERANCE = {"float16": 1e-2, "float32": 1e-3, "float64": 1e-3}


def import_embeddings(
    vectors: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    model: str,
    ids: str | Path | Sequence[str | Path] | None = None,
    id_column: str = "id",
    vector_column: str = "embedding",
    pooling: str | None = None,
    normalized: bool | None = None,
    normalize: bool = False,
    dtype: StoreDtype = "float32",
    shard_rows: int | None = None,
    batch_rows: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> EmbeddingStore:
    """Import ids and vectors from files into an embedding store at ``out``.

    Parameters
    ----------
    vectors : path or list of paths
        Parquet (``.parquet``), Arrow IPC (``.arrow``, file or stream format)
        or NumPy (``.npy``, shape (n, dim)) files, or a directory of them; read
        in the order given (a directory's files sorted by name).
    out : path
        The store directory. The same import again reuses it; a directory
        holding anything but a thresher embedding store is refused, and an
        existing store is replaced only with ``overwrite``.
    model : str
        The name of the model that made the vectors, recorded as given.
    ids : path or list of paths, optional
        Where the ids are, when not in the vector files (required for ``.npy``
        vectors): Parquet, Arrow or JSON Lines files (their ``id_column``), an
        ``.npy`` of integer or string ids, or a ``.txt`` file of one id a line.
        Their rows, in order, pair with the vector rows in order.
    id_column, vector_column : str, default "id", "embedding"
        Columns of Parquet/Arrow/JSON Lines files.
    pooling : str, optional
        How the model pooled token states, recorded as given (None: unknown).
    normalized : bool, optional
        Whether the rows are L2-normalised, as the user states it: True is
        checked (a row whose norm is not 1 is refused, naming its id), False
        recorded; None detects it from the rows.
    normalize : bool, default False
        L2-normalise every row on import (a zero row is refused); the store is
        then marked normalised.
    dtype : "float32" or "float16", default "float32"
        Storage type of the vectors (the source may be float16, float32 or float64).
    shard_rows : int, optional
        Rows per store shard (default: the runtime partition size, 50,000).
    batch_rows : int, optional
        Rows read at once (default: the runtime block size, 65,536); memory
        stays bounded by it and ``shard_rows``.
    overwrite : bool, default False
        Replace an existing embedding store (of other files or settings) in ``out``.
    progress : bool, default False
        Show a progress bar in rows.

    Returns
    -------
    EmbeddingStore

    Raises
    ------
    InputDataError
        A file that cannot be read, a missing column, ids and vectors of
        different lengths, a vector of another width (naming its file and
        row), a NaN or infinite value or a repeated id (naming the id), no rows.
    ParameterError
        A bad option.
    """
    from thresher.config import runtime_config
    from thresher.stores.output_guard import check_output

    if not isinstance(model, str) or not model.strip():
        raise ParameterError(f"The 'model' parameter of import_embeddings must name the model that made the vectors; got {model!r}.")
    if dtype not in ("float32", "float16"):
        raise ParameterError(f"The 'dtype' parameter of import_embeddings must be 'float32' or 'float16'; got {dtype!r}.")
    if normalized is not None and not isinstance(normalized, bool):
        raise ParameterError(f"The 'normalized' parameter of import_embeddings must be True, False or None (detect); got {normalized!r}.")
    if normalize and normalized is False:
        raise ParameterError("The 'normalize' and 'normalized' parameters of import_embeddings contradict each other: "
                             "normalize=True makes unit vectors, normalized=False states they are not.")
    config = runtime_config()
    shard_rows = _positive_int(config.partition_rows if shard_rows is None else shard_rows, "shard_rows")
    batch_rows = _positive_int(config.block_rows if batch_rows is None else batch_rows, "batch_rows")
    vector_files = _resolve(vectors, "vectors", _VECTOR_FORMATS)
    id_files = _resolve(ids, "ids", _ID_FORMATS) if ids is not None else []
    given = {"vector file": _as_list(vectors) + vector_files, "ids": (_as_list(ids) if ids is not None else []) + id_files}
    check_output(out, "embeddings", inputs=given, overwrite=overwrite)  # a directory given: never written into
    plan = _plan(vector_files, id_files, id_column=id_column, vector_column=vector_column)
    settings = ImportSettings(model=model.strip(), pooling=pooling, normalized=normalized, normalize=normalize, dtype=dtype,
                              shard_rows=shard_rows, batch_rows=batch_rows, id_column=id_column, vector_column=vector_column)
    return _import(plan, settings, out, overwrite=overwrite, progress=progress)


# -- the plan: every file opened and checked before any output exists ------------------------------------------


@dataclass
class _VectorFile:
    path: str
    format: Literal["parquet", "arrow", "npy"]
    rows: int
    dim: int | None  # None: a list column, known from its first row
    source_dtype: str
    has_ids: bool


@dataclass
class _IdFile:
    path: str
    format: str
    rows: int


@dataclass
class _Plan:
    vectors: list[_VectorFile]
    ids: list[_IdFile]
    id_column: str
    vector_column: str

    @property
    def n_rows(self) -> int:
        return sum(f.rows for f in self.vectors)


@dataclass(frozen=True)
class ImportSettings:
    """What the user stated about the vectors and how the store is laid out."""

    model: str
    pooling: str | None
    normalized: bool | None
    normalize: bool
    dtype: StoreDtype
    shard_rows: int
    batch_rows: int
    id_column: str
    vector_column: str

    def params(self) -> dict[str, Any]:
        """What the store's content depends on, besides the files (``batch_rows`` does not change it)."""
        return {"model": self.model, "pooling": self.pooling, "normalized": self.normalized, "normalize": self.normalize,
                "dtype": self.dtype, "shard_rows": self.shard_rows, "id_column": self.id_column, "vector_column": self.vector_column}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(f"The {name!r} parameter of import_embeddings must be an int >= 1; got {value!r}.")
    return int(value)


def _as_list(paths: Any) -> list[str]:
    return [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]


def _resolve(paths: Any, what: str, formats: dict[str, str]) -> list[str]:
    """Local files in order: a directory gives its supported files sorted by name; URLs and unknown extensions are refused."""
    items = _as_list(paths)
    if not items:
        raise ParameterError(f"The {what!r} parameter of import_embeddings names no file.")
    out: list[str] = []
    for item in items:
        text = os.fspath(item)
        if "://" in text:
            raise InputDataError(f"{text} is a URL; import_embeddings reads local files (copy the {what} file here first).")
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _suffix(p) in formats)
            if not found:
                raise InputDataError(f"The {what} directory {text} holds no {', '.join(sorted(set(formats)))} file.")
            out += [str(p) for p in found]
            continue
        if not path.exists():
            raise InputDataError(f"The {what} file {text} does not exist.")
        if not path.is_file():
            raise InputDataError(f"The {what} path {text} is not a regular file.")
        if _suffix(path) not in formats:
            raise InputDataError(f"The {what} file {text} has an extension import_embeddings does not read; "
                                 f"use {', '.join(sorted(set(formats)))}.")
        out.append(str(path))
    return out


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _plan(vector_files: list[str], id_files: list[str], *, id_column: str, vector_column: str) -> _Plan:
    vectors = [_plan_vectors(path, id_column=id_column, vector_column=vector_column, ids_elsewhere=bool(id_files)) for path in vector_files]
    first = vectors[0]
    for f in vectors[1:]:
        if f.dim is not None and first.dim is not None and f.dim != first.dim:
            raise InputDataError(f"The vectors of {f.path} have dim {f.dim}; those of {first.path} have dim {first.dim}: all files must have one width.")
    ids = [_plan_ids(path, id_column) for path in id_files]
    if not id_files:
        missing = [f.path for f in vectors if not f.has_ids]
        if missing:
            raise InputDataError(f"{missing[0]} holds vectors without ids; give the ids in another file (ids=..., --ids FILE): "
                                 "a Parquet/Arrow/JSON Lines file with an id column, an .npy of ids or a text file of one id a line.")
    else:
        n_ids, n_vectors = sum(f.rows for f in ids), sum(f.rows for f in vectors)
        if n_ids != n_vectors:
            raise InputDataError(f"The ids files hold {n_ids} ids ({', '.join(f'{Path(f.path).name}: {f.rows}' for f in ids)}) but the vector files "
                                 f"hold {n_vectors} rows ({', '.join(f'{Path(f.path).name}: {f.rows}' for f in vectors)}); each vector row needs one id.")
    plan = _Plan(vectors, ids, id_column, vector_column)
    if plan.n_rows == 0:
        raise InputDataError(f"The vector files hold no rows ({', '.join(f.path for f in vectors)}); there is nothing to import.")
    return plan


def _plan_vectors(path: str, *, id_column: str, vector_column: str, ids_elsewhere: bool) -> _VectorFile:
    fmt = _VECTOR_FORMATS[_suffix(Path(path))]
    if fmt == "npy":
        array = _open_npy(path, "vectors")
        if array.ndim != 2:
            raise InputDataError(f"{path} holds an array of shape {array.shape}; vectors must be 2-D, (rows, dim).")
        if array.dtype.name not in ("float16", "float32", "float64"):
            raise InputDataError(f"{path} holds {array.dtype} values; vectors must be float16, float32 or float64.")
        if array.shape[1] == 0:
            raise InputDataError(f"{path} holds vectors of width 0.")
        return _VectorFile(path, "npy", int(array.shape[0]), int(array.shape[1]), array.dtype.name, has_ids=False)
    schema, rows = _arrow_schema_and_rows(path, fmt)
    if vector_column not in schema.names:
        raise InputDataError(f"The vector column {vector_column!r} is not in {path}; it has columns {schema.names} (choose one with --vector-column).")
    kind = schema.field(vector_column).type
    dim, source_dtype = _vector_type(kind, path, vector_column)
    has_ids = id_column in schema.names
    if has_ids and not ids_elsewhere:
        _check_id_type(schema.field(id_column).type, path, id_column)
    return _VectorFile(path, fmt, rows, dim, source_dtype, has_ids=has_ids)


def _vector_type(kind: pa.DataType, path: str, column: str) -> tuple[int | None, str]:
    """(dim or None for a variable list, source float dtype) of a vector column; anything else is refused."""
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        value = kind.value_type
        if str(value) in _FLOATS or value in (pa.float16(), pa.float32(), pa.float64()):
            dim = kind.list_size if pa.types.is_fixed_size_list(kind) else None
            if dim == 0:
                raise InputDataError(f"The vector column {column!r} of {path} holds vectors of width 0.")
            return dim, _FLOATS[str(value)]
    raise InputDataError(f"The vector column {column!r} of {path} holds {kind} values; vectors must be lists (or fixed-size lists) "
                         "of float16, float32 or float64.")


def _check_id_type(kind: pa.DataType, path: str, column: str) -> None:
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputDataError(f"The id column {column!r} of {path} holds {kind} values; ids must be integers or strings.")


def _open_npy(path: str, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc) or "Object arrays" in str(exc):
            raise InputDataError(f"{path} holds Python objects (a pickled array); {what} must be a plain numeric or string array.") from None
        raise InputDataError(f"{path} is not a readable .npy file: {exc}") from None
    except (OSError, EOFError) as exc:
        raise InputDataError(f"{path} is not a readable .npy file: {exc}") from None


def _open_ipc(path: str) -> tuple[Any, bool]:
    """An Arrow IPC reader over the memory-mapped file: (reader, is_file_format). The file format is tried first, then the stream."""
    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_file(source), True
    except (pa.ArrowInvalid, OSError):
        source.seek(0)
    try:
        return pa.ipc.open_stream(source), False
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{path} is not an Arrow IPC file or stream: {exc}") from None


def _arrow_schema_and_rows(path: str, fmt: str) -> tuple[pa.Schema, int]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputDataError(f"{path} is not a readable Parquet file: {exc}") from None
        return meta.schema_arrow, int(meta.metadata.num_rows)
    reader, is_file = _open_ipc(path)
    if is_file:
        return reader.schema, sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    try:  # a stream is counted by walking its batches: memory-mapped, their buffers are never copied
        return reader.schema, sum(batch.num_rows for batch in reader)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{path} is a truncated or corrupt Arrow IPC stream: {exc}") from None


def _plan_ids(path: str, id_column: str) -> _IdFile:
    fmt = _ID_FORMATS[_suffix(Path(path))]
    if fmt == "npy":
        array = _open_npy(path, "ids")
        if array.ndim != 1 or array.dtype.kind not in "iuUS":
            raise InputDataError(f"{path} holds a {array.dtype} array of shape {array.shape}; ids must be a 1-D array of integers or strings.")
        return _IdFile(path, fmt, int(array.shape[0]))
    if fmt in ("parquet", "arrow"):
        schema, rows = _arrow_schema_and_rows(path, fmt)
        if id_column not in schema.names:
            raise InputDataError(f"The id column {id_column!r} is not in {path}; it has columns {schema.names} (choose one with --id-column).")
        _check_id_type(schema.field(id_column).type, path, id_column)
        return _IdFile(path, fmt, rows)
    rows, last = 0, b"\n"
    with open(path, "rb") as f:  # counted in one streaming pass; empty lines are refused when read
        for chunk in iter(lambda: f.read(8 << 20), b""):
            rows += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        rows += 1  # a last line without a newline
    return _IdFile(path, fmt, rows)


# -- reading ----------------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    vectors: np.ndarray  # (n, dim), the source dtype
    ids: pa.Array | None  # from the vector file itself, when it holds them
    path: str
    row: int  # row of the file the batch starts at


def _iter_vectors(f: _VectorFile, plan: _Plan, batch_rows: int, *, with_ids: bool) -> Iterator[_Batch]:
    if f.format == "npy":
        array = _open_npy(f.path, "vectors")
        for lo in range(0, f.rows, batch_rows):
            yield _Batch(np.asarray(array[lo : lo + batch_rows]), None, f.path, lo)
        return
    columns = [plan.vector_column] + ([plan.id_column] if with_ids else [])
    row = 0
    for batch in _iter_record_batches(f.path, f.format, columns, batch_rows):
        vectors = _vectors_of(batch.column(plan.vector_column), f, row, batch.column(plan.id_column) if with_ids else None, f.dim)
        if f.dim is None:
            f.dim = vectors.shape[1] if len(vectors) else None
        yield _Batch(vectors, batch.column(plan.id_column) if with_ids else None, f.path, row)
        row += batch.num_rows


def _iter_record_batches(path: str, fmt: str, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_rows`` rows holding ``columns``."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            yield batch
        return
    reader, is_file = _open_ipc(path)
    batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) if is_file else iter(reader)
    for batch in batches:
        batch = batch.select(columns)
        for lo in range(0, batch.num_rows, batch_rows):
            yield batch.slice(lo, batch_rows)


def _vectors_of(column: pa.Array, f: _VectorFile, row: int, ids: pa.Array | None, dim: int | None) -> np.ndarray:
    """A batch's vector column as an (n, dim) array, refusing nulls and rows of another width (naming the file, row and id)."""
    def where(offset: int) -> str:
        named = f"id={ids[offset].as_py()!r}, " if ids is not None and ids[offset].is_valid else ""
        return f"row {row + offset} ({named}0-based) of {f.path}"

    n = len(column)
    if column.null_count:
        raise InputDataError(f"The vector column of {where(_first(column.is_null()))} is null; every row needs a vector.")
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        width = dim if dim is not None else (int(lengths[0]) if n else 0)
        bad = np.flatnonzero(lengths != width)
        if len(bad):
            raise InputDataError(f"The vector at {where(int(bad[0]))} has {int(lengths[bad[0]])} values; the vectors before it have {width}: "
                                 "every vector must have the same width.")
        if width == 0:
            raise InputDataError(f"The vector at {where(0)} is empty (width 0).")
    values = column.flatten()
    if values.null_count:
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        raise InputDataError(f"The vector at {where(int(parents[_first(values.is_null())]))} holds a null value; vectors must be all numbers.")
    return values.to_numpy(zero_copy_only=False).reshape(n, width)


def _first(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


class _IdReader:
    """The ids files read in order as one stream, handed out ``take(n)`` at a time, each chunk checked (nulls, type)."""

    def __init__(self, plan: _Plan, batch_rows: int):
        self._files = iter(plan.ids)
        self._id_column = plan.id_column
        self._batch_rows = batch_rows
        self._chunks: Iterator[tuple[pa.Array, str, int]] = iter(())
        self._buffer: list[pa.Array] = []
        self._buffered = 0

    def take(self, n: int) -> pa.Array:
        while self._buffered < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                f = next(self._files, None)
                if f is None:
                    raise InputDataError(f"The ids files ran out of ids before the vectors did ({self._buffered} left for {n} rows).")
                self._chunks = self._read(f)
                continue
            array, path, row = chunk
            self._buffer.append(check_ids(array, path, row, self._id_column))
            self._buffered += len(array)
        joined = pa.concat_arrays(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer = [joined.slice(n)] if len(joined) > n else []
        self._buffered = len(joined) - n
        return joined.slice(0, n)

    def _read(self, f: _IdFile) -> Iterator[tuple[pa.Array, str, int]]:
        if f.format == "npy":
            array = _open_npy(f.path, "ids")
            for lo in range(0, f.rows, self._batch_rows):
                part = np.asarray(array[lo : lo + self._batch_rows])
                yield (pa.array(part.astype(str).tolist(), pa.string()) if part.dtype.kind in "US" else pa.array(part)), f.path, lo
        elif f.format in ("parquet", "arrow"):
            row = 0
            for batch in _iter_record_batches(f.path, f.format, [self._id_column], self._batch_rows):
                yield batch.column(0), f.path, row
                row += batch.num_rows
        else:
            yield from _read_text_ids(f, self._id_column, self._batch_rows)


def _read_text_ids(f: _IdFile, id_column: str, batch_rows: int) -> Iterator[tuple[pa.Array, str, int]]:
    """Ids from a text file (one a line) or a JSON Lines file (``id_column`` of each object), ``batch_rows`` lines at a time."""
    values: list[Any] = []
    start = 0
    with open(f.path, encoding="utf-8", newline="") as handle:
        try:
            for number, line in enumerate(handle):
                text = line.rstrip("\r\n")
                if f.format == "text":
                    if not text.strip():
                        raise InputDataError(f"Line {number + 1} of {f.path} is empty; the ids file needs one id a line.")
                    values.append(text)
                else:
                    values.append(_json_id(text, f.path, number, id_column))
                if len(values) == batch_rows:
                    yield _id_array(values, f.path, start), f.path, start
                    start, values = start + len(values), []
        except UnicodeDecodeError as exc:
            raise InputDataError(f"{f.path} is not UTF-8 text: {exc}") from None
    if values:
        yield _id_array(values, f.path, start), f.path, start


def _json_id(text: str, path: str, number: int, id_column: str) -> Any:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"Line {number + 1} of {path} is not valid JSON: {exc.msg}.") from None
    if not isinstance(row, dict) or id_column not in row:
        raise InputDataError(f"Line {number + 1} of {path} has no {id_column!r} key (the id column).")
    value = row[id_column]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputDataError(f"The id {value!r} on line {number + 1} of {path} is neither an integer nor a string.")
    return value


def _id_array(values: list[Any], path: str, start: int) -> pa.Array:
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        offset = next(i for i, v in enumerate(values) if type(v) is not type(values[0]))
        raise InputDataError(f"{path} mixes integer and string ids (line {start + offset + 1} holds {values[offset]!r}, "
                             f"line {start + 1} holds {values[0]!r}); ids must all be of one kind.")
    try:
        return pa.array(values, pa.int64() if kinds == {int} else pa.string())
    except OverflowError:
        raise InputDataError(f"{path} holds an integer id that does not fit in 64 bits.") from None


def check_ids(array: pa.Array | pa.ChunkedArray, path: str, row: int, column: str) -> pa.Array:
    """A chunk of ids as int64 or string, refusing nulls and other types (naming the file and row)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise InputDataError(f"The id column {column!r} is null in row {row + _first(array.is_null())} (0-based) of {path}; every row needs an id.")
    kind = array.type
    if pa.types.is_integer(kind):
        if pa.types.is_uint64(kind) and len(array) and pc.max(array).as_py() > np.iinfo(np.int64).max:
            big = _first(pc.greater(array, pa.scalar(np.iinfo(np.int64).max, pa.uint64())))
            raise InputDataError(f"The id {array[big].as_py()} in row {row + big} of {path} does not fit in a signed 64-bit integer.")
        return array.cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array.cast(pa.string())
    raise InputDataError(f"The id column {column!r} of {path} holds {kind} values; ids must be integers or strings.")


# -- writing ----------------------------------------------------------------------------------------------------


def _import_fingerprint(plan: _Plan, settings: ImportSettings) -> tuple[str, dict[str, Any]]:
    """The store's fingerprint (the files' contents and the settings) and the files' records (source, checksum, size, mtime)."""
    from thresher.fingerprint import fingerprint_of
    from thresher.stores.pool.fs import content_key, file_record

    vectors = [file_record(f.path, content_key(f.path, {}), {}) for f in plan.vectors]
    ids = [file_record(f.path, content_key(f.path, {}), {}) for f in plan.ids]
    inputs = [f"vectors|{r['checksum']}" for r in vectors] + [f"ids|{r['checksum']}" for r in ids]
    return fingerprint_of("import_embeddings", IMPORT_VERSION, settings.params(), inputs), {"vectors": vectors, "ids": ids}


def _import(plan: _Plan, settings: ImportSettings, out: str | Path, *, overwrite: bool, progress: bool) -> EmbeddingStore:
    fingerprint, files = _import_fingerprint(plan, settings)
    return _write_store(plan, settings, out, fingerprint=fingerprint, files=files, overwrite=overwrite, progress=progress)


@locks_output("out")
def _write_store(plan: _Plan, settings: ImportSettings, out: str | Path, *, fingerprint: str, files: dict[str, Any], overwrite: bool,
                 progress: bool) -> EmbeddingStore:
    from thresher.stores.atomic import atomic_write_json
    from thresher.stores.manifest import PARTIAL_NAME, prepare_output_dir
    from thresher.stores.output_guard import clear_output

    out = Path(out)
    state = prepare_output_dir(out, "embeddings", fingerprint, overwrite=overwrite)
    if state == "complete":
        return open_embedding_store(out)
    if state == "resume":  # an interrupted import of the same files: one pass rewrites every shard, so start clean
        clear_output(out, "embeddings")
        atomic_write_json(out / PARTIAL_NAME, {"artifact": "embeddings", "fingerprint": fingerprint})
    writer = _ShardWriter(out, settings)
    try:
        _stream(plan, settings, writer, progress=progress)
        writer.flush()
        _check_unique(writer, plan)
    except (InputDataError, ParameterError):
        writer.remove_written()  # a refused import leaves no shard behind (nothing of it could be resumed)
        raise
    source = {
        "kind": "import",
        "vector_files": files["vectors"],
        "id_files": files["ids"],
        "id_column": settings.id_column if plan.ids or any(f.has_ids for f in plan.vectors) else None,
        "vector_column": settings.vector_column if any(f.format != "npy" for f in plan.vectors) else None,
        "source_dtypes": sorted({f.source_dtype for f in plan.vectors}),
        "normalized_stated": settings.normalized,
        "normalized_on_import": settings.normalize,
    }
    encoder = {"model": settings.model, "pooling": settings.pooling, "layer": None, "normalize": writer.unit_rows, "imported": True}
    finalize_embedding_store(out, shards=writer.shards, fingerprint=fingerprint, dim=writer.dim, dtype=settings.dtype, encoder=encoder,
                             pool=None, extra={"source": source, "n_rows_imported": writer.n_rows})
    return open_embedding_store(out)


class _ShardWriter:
    """Gathers checked rows into shards of ``shard_rows`` and writes each atomically; keeps each row's id key (8 bytes) for the duplicate check."""

    def __init__(self, out: Path, settings: ImportSettings):
        self.out = out
        self.settings = settings
        self.dim: int | None = None
        self.shards: list[Any] = []
        self.keys: list[np.ndarray] = []
        self.id_kind: str | None = None
        self.n_rows = 0
        self.unit_rows = True  # every row so far has norm 1 (after normalize, if asked)
        self._vectors: np.ndarray | None = None
        self._ids: list[pa.Array] = []
        self._filled = 0

    def add(self, vectors: np.ndarray, ids: pa.Array) -> None:
        lo = 0
        while lo < len(vectors):
            if self._vectors is None:
                self._vectors = np.empty((self.settings.shard_rows, self.dim), dtype=self.settings.dtype)
            n = min(len(vectors) - lo, self.settings.shard_rows - self._filled)
            self._vectors[self._filled : self._filled + n] = vectors[lo : lo + n]
            self._ids.append(ids.slice(lo, n))
            self._filled += n
            lo += n
            if self._filled == self.settings.shard_rows:
                self.flush()

    def flush(self) -> None:
        if not self._filled:
            return
        ids = pa.concat_arrays(self._ids) if len(self._ids) > 1 else self._ids[0]
        self.keys.append(id_keys(ids_to_numpy(ids)))
        self.shards.append(write_embedding_shard(self.out, len(self.shards), ids, self._vectors[: self._filled], dtype=self.settings.dtype))
        self.n_rows += self._filled
        self._ids, self._filled = [], 0

    def remove_written(self) -> None:
        for shard in self.shards:
            (self.out / shard.file).unlink(missing_ok=True)

    # a store-like view of what is written, for reading ids back by position
    @property
    def n_shards(self) -> int:
        return len(self.shards)

    @property
    def shard_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([s.rows for s in self.shards])]).astype(np.int64)

    def shard_ids(self, i: int) -> np.ndarray:
        from thresher.stores.arrow_io import read_stream_shard

        return ids_to_numpy(read_stream_shard(self.out / self.shards[i].file).column("id"))


@dataclass
class _RowSource:
    """Where the stream's rows came from: per vector file, its first global row (to name a file and row from a position)."""

    starts: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def where(self, position: int) -> str:
        i = int(np.searchsorted(self.starts, position, side="right") - 1)
        return f"row {position - self.starts[i]} of {self.paths[i]}"


def _stream(plan: _Plan, settings: ImportSettings, writer: _ShardWriter, *, progress: bool) -> None:
    from thresher.jobs.progress import RowProgress

    id_reader = _IdReader(plan, settings.batch_rows) if plan.ids else None
    bar = RowProgress(plan.n_rows, description="import", enabled=progress)
    first_dim: tuple[int, str] | None = None
    id_kind: tuple[str, str] | None = None
    try:
        for f in plan.vectors:
            if f.dim is None and first_dim is not None:
                f.dim = first_dim[0]  # a list column's rows are checked against the width of the files before it
            for batch in _iter_vectors(f, plan, settings.batch_rows, with_ids=id_reader is None):
                n = len(batch.vectors)
                if not n:
                    continue
                ids = id_reader.take(n) if id_reader is not None else check_ids(batch.ids, batch.path, batch.row, settings.id_column)
                kind = "int" if pa.types.is_integer(ids.type) else "str"
                if id_kind is None:
                    id_kind = (kind, batch.path)
                elif kind != id_kind[0]:
                    words = {"int": "integer", "str": "string"}
                    raise InputDataError(f"The ids of row {batch.row} of {batch.path} are {words[kind]}s; those of {id_kind[1]} are "
                                         f"{words[id_kind[0]]}s: ids must all be of one kind.")
                dim = batch.vectors.shape[1]
                if first_dim is None:
                    first_dim = (dim, batch.path)
                    writer.dim = dim
                elif dim != first_dim[0]:
                    raise InputDataError(f"The vectors of {batch.path} (from row {batch.row}) have dim {dim}; those of {first_dim[1]} have "
                                         f"dim {first_dim[0]}: all files must have one width.")
                writer.add(_checked_rows(batch, ids, settings, writer), ids)
                bar.advance(n)
    finally:
        bar.close()


def _checked_rows(batch: _Batch, ids: pa.Array, settings: ImportSettings, writer: _ShardWriter) -> np.ndarray:
    """The batch's rows after the value checks: finite, normalised if asked, unit norm if stated."""
    vectors = batch.vectors
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputDataError(f"The vector of id={ids[bad].as_py()!r} (row {batch.row + bad} of {batch.path}) holds NaN or infinity; "
                             "every value must be finite.")
    compute = np.float64 if vectors.dtype == np.float64 else np.float32
    norms = np.linalg.norm(vectors.astype(compute, copy=False), axis=1)
    if settings.normalize:
        zero = norms == 0
        if zero.any():
            bad = int(np.flatnonzero(zero)[0])
            raise InputDataError(f"The vector of id={ids[bad].as_py()!r} (row {batch.row + bad} of {batch.path}) is all zeros and cannot be "
                                 "L2-normalised (normalize=True, --normalize).")
        return vectors.astype(compute) / norms[:, None]
    if settings.dtype == "float16" and vectors.dtype != np.float16:
        limit = float(np.finfo(np.float16).max)
        beyond = np.abs(vectors).max(axis=1) > limit
        if beyond.any():
            bad = int(np.flatnonzero(beyond)[0])
            raise InputDataError(f"The vector of id={ids[bad].as_py()!r} (row {batch.row + bad} of {batch.path}) holds "
                                 f"{float(vectors[bad][np.argmax(np.abs(vectors[bad]))]):g}, beyond float16's range (±{limit:g}); "
                                 "store as float32 (dtype='float32', --dtype float32) or normalise on import (--normalize).")
    tolerance = _UNIT_TOLERANCE[vectors.dtype.name]
    off = np.abs(norms - 1.0) > tolerance
    if off.any():
        writer.unit_rows = False
        if settings.normalized:
            bad = int(np.flatnonzero(off)[0])
            raise InputDataError(f"The vector of id={ids[bad].as_py()!r} (row {batch.row + bad} of {batch.path}) has L2 norm {norms[bad]:.6g}, "
                                 f"not 1 (within {tolerance:g}), though the vectors were stated to be normalised (normalized=True, --normalized); "
                                 "pass --normalize to normalise them on import, or --no-normalized.")
    if settings.normalized is False:
        writer.unit_rows = False
    return vectors


def _check_unique(writer: _ShardWriter, plan: _Plan) -> None:
    """Refuse a repeated id, naming it and two rows that hold it (from 8-byte keys; only matching keys' ids are read back)."""
    keys = np.concatenate(writer.keys)
    writer.keys = []
    found = first_duplicate(keys, lambda positions: store_ids_at(writer, positions))
    if found is None:
        return
    value, positions = found
    rows = _RowSource(list(np.cumsum([0] + [f.rows for f in plan.vectors])[:-1]), [f.path for f in plan.vectors])
    raise InputDataError(f"The id {value!r} appears {len(positions)} times ({rows.where(int(positions[0]))} and {rows.where(int(positions[1]))}"
                         f"{' and more' if len(positions) > 2 else ''}): ids must be unique.")
