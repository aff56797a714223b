"""JSON Lines (.jsonl, .ndjson) and JSON (.json) pool files, optionally gzip-compressed.

Planning scans a JSON Lines file in fixed-size byte chunks, counting lines with
numpy and recording the byte offset of every ``partition_rows``-th row, so a
partition of an uncompressed file is read by seeking to its byte range; a
gzip-compressed file is rescanned up to the partition instead. Blank lines are
not rows. A .json file holding an array is read whole; one holding objects line
by line is read as JSON Lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import xxhash

from thresher.exceptions import InputDataError
from thresher.stores.pool.fs import content_key, filesystem, is_local, open_binary, open_text_stream
from thresher.stores.pool.partition import FilePlan, PoolPartition, empty_source_error, row_ranges

if TYPE_CHECKING:
    from thresher.stores.pool.core import Pool

_CHUNK = 4 << 20  # bytes read at once when scanning JSON Lines
_SAMPLE_BYTES = 1 << 20  # bytes of each JSON Lines file the column types are inferred from
# Bytes that make a JSON Lines line blank when it holds nothing else: planning and reading agree on these.
_BLANK = np.zeros(256, dtype=bool)
_BLANK[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = True


def plan_json(source: str, options: dict[str, Any], compressed: bool, partition_rows: int) -> FilePlan:
    """A .json file: one array read whole, or JSON objects line by line planned as JSON Lines."""
    with open_text_stream(source, options, compressed) as stream:
        is_array = _first_byte(stream) == b"["
    if is_array:
        return plan_json_array(source, options, compressed)
    return plan_jsonl(source, options, compressed, partition_rows)


def _first_byte(stream: IO[bytes]) -> bytes:
    while chunk := stream.read(1 << 16):
        stripped = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")
        if stripped:
            return stripped[:1]
    return b""


def plan_jsonl(source: str, options: dict[str, Any], compressed: bool, partition_rows: int) -> FilePlan:
    fs, _ = filesystem(source, options)
    hash_while_scanning = is_local(fs) and not compressed
    hasher = xxhash.xxh3_128() if hash_while_scanning else None
    with open_text_stream(source, options, compressed) as stream:
        scan = _scan_jsonl(stream, partition_rows, hasher=hasher)
    if scan.n_rows == 0:
        raise empty_source_error(source)
    with open_text_stream(source, options, compressed) as stream:
        schema = _jsonl_sample_schema(stream, source)
    if compressed:
        ranges: list[tuple[int, int, int | None, int | None]] = list(row_ranges(scan.n_rows, partition_rows))
    else:
        bounds = scan.marks + [scan.n_bytes]
        ranges = [
            (k * partition_rows, min((k + 1) * partition_rows, scan.n_rows), bounds[k], bounds[k + 1]) for k in range(len(scan.marks))
        ]
    key = f"xxh3_128:{hasher.hexdigest()}" if hasher is not None else content_key(source, options)
    return FilePlan(source, "jsonl.gz" if compressed else "jsonl", scan.n_rows, schema, ranges, key)


@dataclass
class _Scan:
    n_rows: int
    marks: list[int]  # byte offset of rows 0, every, 2 * every, ...
    n_bytes: int


def _scan_jsonl(stream: IO[bytes], every: int, *, stop_row: int | None = None, hasher: Any = None) -> _Scan:
    """Count the non-blank lines of a stream in fixed-size chunks, with numpy (no Python loop per line).

    Records the byte offset of every ``every``-th row; stops early once more than ``stop_row`` rows are seen.
    """
    n_rows = 0
    marks: list[int] = []
    base = 0  # offset of the current chunk
    line_start = 0  # offset of the line still open at the end of the previous chunk
    line_has_content = False
    while chunk := stream.read(_CHUNK):
        if hasher is not None:
            hasher.update(chunk)
        data = np.frombuffer(chunk, dtype=np.uint8)
        content = ~_BLANK[data]
        newlines = np.flatnonzero(data == 10)
        if newlines.size == 0:
            line_has_content = line_has_content or bool(content.any())
            base += len(data)
            continue
        # Line i of this chunk spans [starts[i], newlines[i]]; the first one continues the open line.
        starts = np.concatenate(([0], newlines[:-1] + 1))
        has = np.logical_or.reduceat(content[: newlines[-1] + 1], starts)
        has[0] = has[0] or line_has_content
        row_starts = (base + starts)[has]
        if has[0]:
            row_starts[0] = line_start
        numbers = n_rows + np.arange(len(row_starts))
        marks.extend(row_starts[numbers % every == 0].tolist())
        n_rows += len(row_starts)
        line_start = base + int(newlines[-1]) + 1
        line_has_content = bool(content[newlines[-1] + 1 :].any())
        base += len(data)
        if stop_row is not None and n_rows > stop_row:
            return _Scan(n_rows, marks, base)
    if line_has_content:
        if n_rows % every == 0:
            marks.append(line_start)
        n_rows += 1
    return _Scan(n_rows, marks, base)


def _jsonl_sample_schema(stream: IO[bytes], source: str) -> pa.Schema:
    """Column types inferred from the first ~1 MiB of whole lines."""
    data = b""
    while len(data) < _SAMPLE_BYTES or b"\n" not in data:
        chunk = stream.read(_SAMPLE_BYTES)
        if not chunk:
            break
        data += chunk
    else:
        data = data[: data.rindex(b"\n") + 1]
    return _parse_jsonl(data, source, first_line=1, schema=None).schema


def _parse_jsonl(data: bytes, source: str, *, first_line: int | None, schema: pa.Schema | None, locate: Any = None) -> pa.Table:
    """Parse JSON Lines bytes with pyarrow (columns not in ``schema`` are inferred); name the bad line on failure."""
    import pyarrow.json as pj

    _check_utf8(data, source, first_line, locate)
    explicit = None if schema is None else pa.schema([f for f in schema if not pa.types.is_null(f.type)])
    parse = pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer")
    block = 1 << 20
    while True:
        try:
            return pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(block_size=block), parse_options=parse)
        except pa.ArrowInvalid as exc:
            message = str(exc)
            if "straddl" in message and block < len(data):
                block = min(max(block * 8, 1), len(data) + 1)  # one line longer than a block: use bigger blocks
                continue
            line = first_line if first_line is not None else locate()
            bad = _locate_json_error(data, source, line)
            if bad is not None:
                raise bad from None
            raise InputDataError(f"The JSON Lines of {source} from line {line} on hold values of conflicting types: {message}") from None


def _check_utf8(data: bytes, source: str, first_line: int | None, locate: Any) -> None:
    """Refuse bytes that are not UTF-8, naming the line: pyarrow's JSON reader lets them through into string columns."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    try:
        pa.LargeStringArray.from_buffers(1, offsets, pa.py_buffer(data)).validate(full=True)  # no copy, unlike bytes.decode
    except pa.ArrowInvalid:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = (first_line if first_line is not None else locate()) + data.count(b"\n", 0, exc.start)
            raise InputDataError(
                f"Line {line} of {source} is not valid UTF-8 (byte {data[exc.start]:#04x}); pool files must be UTF-8 encoded."
            ) from None
        raise


def _locate_json_error(data: bytes, source: str, first_line: int) -> InputDataError | None:
    for offset, line in enumerate(data.split(b"\n")):
        if not line.strip(b" \t\r"):
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            return InputDataError(f"Line {first_line + offset} of {source} is not valid JSON: {exc}.")
        if not isinstance(value, dict):
            return InputDataError(
                f"Line {first_line + offset} of {source} is a JSON {type(value).__name__}, not an object; each line must be one JSON object."
            )
        surrogate = _lone_surrogate(value)
        if surrogate is not None:
            return _surrogate_error(f"Line {first_line + offset} of {source}", surrogate)
    return None


def _lone_surrogate(value: Any) -> str | None:
    """The first lone UTF-16 surrogate (a JSON escape like \\ud800 with no partner) in a parsed JSON value, or None."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.object[exc.start]
    return None


def _surrogate_error(where: str, surrogate: str) -> InputDataError:
    return InputDataError(
        f"{where} holds the lone surrogate \\u{ord(surrogate):04x} in a string: half of a UTF-16 pair, not a character, "
        "so the text cannot be stored; fix or drop that escape."
    )


def plan_json_array(source: str, options: dict[str, Any], compressed: bool) -> FilePlan:
    table = _read_json_array(source, options, compressed)
    if table.num_rows == 0:
        raise empty_source_error(source)
    fmt = "json.gz" if compressed else "json"
    return FilePlan(source, fmt, table.num_rows, table.schema, [(0, table.num_rows, None, None)], content_key(source, options))


def _read_json_array(source: str, options: dict[str, Any], compressed: bool) -> pa.Table:
    with open_text_stream(source, options, compressed) as stream:
        raw = stream.read()
    try:
        rows = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"Line {exc.lineno} of {source} is not valid JSON: {exc.msg} (column {exc.colno}).") from None
    except ValueError as exc:
        raise InputDataError(f"{source} is not valid JSON: {exc}.") from None
    if not isinstance(rows, list):
        raise InputDataError(f"{source} holds a JSON {type(rows).__name__}; a .json pool file must hold an array of objects (or JSON Lines).")
    for position, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputDataError(f"Element {position} of the JSON array in {source} is a {type(row).__name__}, not an object.")
    if not rows:
        return pa.table({})
    try:
        return pa.Table.from_struct_array(pa.array(rows))
    except UnicodeEncodeError:
        position, surrogate = next((i, c) for i, row in enumerate(rows) if (c := _lone_surrogate(row)) is not None)
        raise _surrogate_error(f"Element {position} of the JSON array in {source}", surrogate) from None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputDataError(f"The objects in {source} hold values of conflicting types: {exc}") from None


def read_jsonl(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    options = pool.storage_options
    if part.format == "jsonl":
        with open_binary(part.source, options) as handle:
            handle.seek(part.byte_start)
            data = handle.read(part.byte_stop - part.byte_start)

        def locate() -> int:
            with open_binary(part.source, options) as handle:
                return _count_newlines(handle, part.byte_start) + 1

    else:
        start, stop = _gz_offsets(part, pool.partition_rows, options)
        with open_text_stream(part.source, options, True) as stream:
            _skip(stream, start)
            data = stream.read(stop - start)

        def locate() -> int:
            with open_text_stream(part.source, options, True) as stream:
                return _count_newlines(stream, start) + 1

    table = _parse_jsonl(data, part.source, first_line=None, schema=pool.schema, locate=locate)
    return _with_columns(table, pool.schema, columns)


def _gz_offsets(part: PoolPartition, partition_rows: int, options: dict[str, Any]) -> tuple[int, int]:
    """Offsets of the partition's first row and of the row after its last, in the decompressed stream."""
    with open_text_stream(part.source, options, True) as stream:
        scan = _scan_jsonl(stream, partition_rows, stop_row=part.stop)
    k = part.start // partition_rows
    if k >= len(scan.marks):
        return scan.n_bytes, scan.n_bytes
    stop = scan.marks[k + 1] if k + 1 < len(scan.marks) else scan.n_bytes
    return scan.marks[k], stop


def _skip(stream: IO[bytes], n_bytes: int) -> None:
    while n_bytes > 0:
        chunk = stream.read(min(n_bytes, _CHUNK))
        if not chunk:
            return
        n_bytes -= len(chunk)


def _count_newlines(stream: IO[bytes], n_bytes: int) -> int:
    count = 0
    while n_bytes > 0:
        chunk = stream.read(min(n_bytes, _CHUNK))
        if not chunk:
            break
        count += chunk.count(b"\n")
        n_bytes -= len(chunk)
    return count


def _with_columns(table: pa.Table, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """``columns`` in order; one absent from these rows (a sparse JSON key) comes back as nulls."""
    arrays = []
    for name in columns:
        if name in table.column_names:
            arrays.append(table.column(name))
        else:
            arrays.append(pa.nulls(table.num_rows, schema.field(name).type))
    return pa.Table.from_arrays(arrays, names=columns)


def read_json_file(pool: Pool, part: PoolPartition, columns: list[str]) -> pa.Table:
    table = _read_json_array(part.source, pool.storage_options, part.format == "json.gz")
    return _with_columns(table, pool.schema, columns).slice(part.start, part.n_rows)
