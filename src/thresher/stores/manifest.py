"""Manifests: the ``manifest.json`` that makes a directory a finished artefact.

Every artefact (embedding store, index, curated shards) is a directory whose
manifest is written last, atomically. A directory without one is incomplete:
it is resumed by the job that owns it or refused, never read as finished.

While a job writes a directory it keeps a small ``.thresher-partial.json``
there naming the artefact kind and the fingerprint of its inputs and
parameters, so a rerun resumes only work that belongs to the same inputs and a
directory that holds something else is never written over by accident.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Literal

from thresher.exceptions import ArtifactError, IncompleteArtifactError
from thresher.fingerprint import hash_file
from thresher.stores.atomic import atomic_write_json, remove_temporaries
from thresher.stores.lock import LOCK_NAME

MANIFEST_NAME = "manifest.json"
PARTIAL_NAME = ".thresher-partial.json"
FORMAT_VERSION = 1

ArtifactKind = Literal["embeddings", "index", "curated", "run"]

_VERSIONED = ("thresher", "numpy", "pyarrow", "faiss-cpu", "torch", "transformers", "sentence-transformers", "dask", "datasets")


_lineage: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("thresher_lineage", default=None)


@contextlib.contextmanager
def manifest_lineage(lineage: dict[str, Any] | None) -> Iterator[None]:
    """Record ``lineage`` (the run, its resolved spec, the step and its inputs) in every manifest written in the block.

    The pipeline runner wraps each step in one, so an artefact made by a run
    says which spec and which upstream artefacts made it, without every stage
    function having to pass it along.
    """
    token = _lineage.set(lineage)
    try:
        yield
    finally:
        _lineage.reset(token)


@dataclass(frozen=True)
class ShardInfo:
    """One shard file of an artefact: its name, row count and content checksum.

    ``size`` and ``mtime_ns`` are the file's size and modification time when it
    was written: a later check whose file still has both skips re-hashing it
    (None in manifests written before they were recorded: always re-hashed).
    """

    file: str
    rows: int
    checksum: str
    size: int | None = None
    mtime_ns: int | None = None

    @classmethod
    def of(cls, path: str | Path, rows: int) -> ShardInfo:
        path = Path(path)
        before = path.stat()
        checksum = f"xxh3_128:{hash_file(path)}"
        return cls(file=path.name, rows=int(rows), checksum=checksum, size=before.st_size, mtime_ns=before.st_mtime_ns)


def artifact_file(directory: str | Path, entry: Any, *, key: str = "shards") -> Path:
    """The path of a file a manifest names, refused unless it lies inside the artefact's directory.

    Every name a manifest lists (shards, attachments, index files) must be a
    relative path below ``directory``: no absolute path, no ``..``, and no
    symlink that leads out of the directory, so a crafted or corrupt manifest
    can never make thresher read (or hash) a file elsewhere.

    Parameters
    ----------
    directory : path
        The artefact directory (the one holding ``manifest.json``).
    entry : str
        The file name as the manifest gives it.
    key : str, default "shards"
        The manifest key that lists it, for the error message.
    """
    directory = Path(directory)
    where = directory / MANIFEST_NAME
    if not isinstance(entry, str) or not entry or "\\" in entry or "\x00" in entry:
        raise ArtifactError(f"{where} lists {entry!r} under {key!r}: a file of an artefact must be a relative path inside {directory}.")
    relative = Path(entry)
    if relative.is_absolute() or ".." in relative.parts or entry.startswith("~"):
        raise ArtifactError(f"{where} lists {entry!r} under {key!r}: a file of an artefact must be a relative path inside {directory}, "
                            "not an absolute path or one with '..'.")
    path = directory / relative
    root = directory.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise ArtifactError(f"{where} lists {entry!r} under {key!r}, which is a link to {resolved}, outside {directory}.")
    return path


def listed_files(directory: str | Path, manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every file a manifest names, as (manifest key, entry with ``file``, ``checksum`` and maybe ``rows``, ``size``, ``mtime_ns``).

    Shards and attachments are lists of entries; an index's ``files`` maps a
    name to its checksum, with the size and mtime_ns under ``file_stats``.
    """
    where = Path(directory) / MANIFEST_NAME
    out = []
    for key in ("shards", "attachments"):
        entries = manifest.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ArtifactError(f"{where} has a malformed {key!r} list.")
        out += [(key, e) for e in entries]
    files, stats = manifest.get("files", {}), manifest.get("file_stats") or {}
    if not isinstance(files, dict) or not isinstance(stats, dict):
        raise ArtifactError(f"{where} has a malformed 'files' mapping.")
    out += [("files", {"file": name, "checksum": checksum, **(stats.get(name) or {})}) for name, checksum in files.items()]
    return out


def check_artifact_files(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest any of whose files (shards, attachments, index files) lies outside ``directory`` (see :func:`artifact_file`); reads no file."""
    for key, entry in listed_files(directory, manifest):
        artifact_file(directory, entry.get("file"), key=key)


def library_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(
    directory: str | Path,
    kind: ArtifactKind,
    *,
    fingerprint: str,
    body: dict[str, Any],
    shards: list[ShardInfo] | None = None,
) -> dict[str, Any]:
    """Write the manifest (last step of every artefact) and drop the partial marker."""
    directory = Path(directory)
    manifest = {
        "artifact": kind,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        **body,
    }
    lineage = _lineage.get()
    if lineage is not None and kind != "run":
        manifest["lineage"] = lineage
    if shards is not None:
        manifest["shards"] = [asdict(s) for s in shards]
        manifest["n_rows"] = sum(s.rows for s in shards)
    atomic_write_json(directory / MANIFEST_NAME, manifest)
    (directory / PARTIAL_NAME).unlink(missing_ok=True)
    return manifest


def read_manifest(directory: str | Path, kind: ArtifactKind | None = None) -> dict[str, Any]:
    """Read ``directory``'s manifest, checking it is finished and of the expected kind."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory} does not exist or is not a directory.")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        hint = " (an interrupted job left it; rerun the job to resume it)" if (directory / PARTIAL_NAME).exists() else ""
        raise IncompleteArtifactError(f"{directory} has no {MANIFEST_NAME}: it is not a finished thresher artefact{hint}.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not a readable JSON manifest: {exc}") from exc
    if not isinstance(manifest, dict) or "artifact" not in manifest:
        raise ArtifactError(f"{path} is not a thresher manifest (no 'artifact' key).")
    if kind is not None and manifest["artifact"] != kind:
        raise ArtifactError(f"{directory} holds a {manifest['artifact']!r} artefact, not {kind!r}.")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {manifest['format_version']}, newer than this thresher reads ({FORMAT_VERSION}); upgrade thresher."
        )
    return manifest


def verify_shards(directory: str | Path, manifest: dict[str, Any], *, quick: bool = False) -> None:
    """Check every shard (and attached table, e.g. SemDeDup's removed.arrow) exists with the recorded checksum; name the first bad one.

    With ``quick``, a file whose size and mtime_ns still equal the ones the
    manifest recorded at write time is taken as intact without re-hashing it
    (the check before a cached artefact is reused); any other is re-hashed.
    """
    directory = Path(directory)
    check_artifact_files(directory, manifest)
    for key, shard in listed_files(directory, manifest):
        problem = shard_problem(directory, shard, quick=quick, key=key)
        if problem is not None:
            raise ArtifactError(f"{'Shard' if key == 'shards' else 'File'} {directory / shard['file']} {problem}.")


def shard_problem(directory: str | Path, shard: dict[str, Any], *, quick: bool = False, key: str = "shards") -> str | None:
    """What is wrong with one shard entry of a manifest (``"is missing"``, ``"… checksum differs …"``), or None if it is intact."""
    path = artifact_file(directory, shard.get("file"), key=key)
    try:
        stat = path.stat()
    except OSError:
        return "listed in the manifest is missing"
    if not path.is_file():
        return "listed in the manifest is not a file"
    size, mtime_ns = shard.get("size"), shard.get("mtime_ns")
    if size is not None and stat.st_size != size:
        return f"is corrupt or truncated: it has {stat.st_size} bytes, the manifest says {size}"
    if quick and mtime_ns is not None and stat.st_mtime_ns == mtime_ns:
        return None
    algo, _, expected = str(shard.get("checksum", "")).partition(":")
    actual = hash_file(path)
    if actual != expected:
        return f"is corrupt or truncated: its {algo} checksum is {actual}, the manifest says {expected}"
    return None


def demote_to_partial(directory: str | Path) -> None:
    """Turn a finished artefact back into a partial run of the same fingerprint, so the job that owns it redoes it.

    The partial-run marker is written before the manifest goes, so the
    directory is always recognisably thresher's (never "unrelated files").
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    atomic_write_json(directory / PARTIAL_NAME, {"artifact": manifest["artifact"], "fingerprint": manifest.get("fingerprint")})
    (directory / MANIFEST_NAME).unlink(missing_ok=True)


OutputState = Literal["new", "resume", "complete"]


def prepare_output_dir(
    directory: str | Path, kind: ArtifactKind, fingerprint: str, *, overwrite: bool = False
) -> OutputState:
    """Make ``directory`` ready for a job writing a ``kind`` artefact with ``fingerprint``.

    Returns "complete" if it already holds that very artefact, "resume" if it
    holds a partial run of the same inputs (its finished shards may be kept),
    and "new" otherwise. Refuses a directory that holds a different artefact
    or unrelated files, unless ``overwrite`` is set, in which case its
    thresher content is removed first.
    """
    from thresher.stores.output_guard import check_location

    directory = Path(directory)
    check_location(directory.resolve(), f"The output directory {directory}")
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"Output path {directory} exists and is not a directory.")
    if directory.is_dir() and any(p.name != LOCK_NAME for p in directory.iterdir()):
        state = _existing_state(directory, kind, fingerprint)
        if state == "complete" and damage(directory) is not None:
            demote_to_partial(directory)  # reused only if intact: a replaced or corrupt shard is recomputed
            state = "resume"
        if state in ("complete", "resume"):
            remove_temporaries(directory)
            return state
        if not overwrite:
            raise ArtifactError(f"Output directory {directory} {state}; choose another directory or pass overwrite=True (--overwrite).")
        _clear(directory, kind)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / PARTIAL_NAME, {"artifact": kind, "fingerprint": fingerprint})
    return "new"


def damage(directory: str | Path) -> str | None:
    """Why the finished artefact in ``directory`` may not be reused as it is (a file missing, replaced or corrupt), or None.

    Quick: files whose size and mtime_ns are those the manifest recorded are not re-hashed.
    """
    try:
        verify_shards(directory, read_manifest(directory), quick=True)
    except ArtifactError as exc:
        return str(exc)
    return None


def _existing_state(directory: Path, kind: str, fingerprint: str) -> str:
    manifest_path = directory / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = read_manifest(directory)
        if manifest["artifact"] != kind:
            return f"holds a {manifest['artifact']!r} artefact, not {kind!r}"
        if manifest.get("fingerprint") == fingerprint:
            return "complete"
        return "holds a finished artefact made from other inputs or parameters"
    partial = directory / PARTIAL_NAME
    if partial.is_file():
        try:
            marker = json.loads(partial.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return "holds an unreadable partial-run marker"
        if marker.get("artifact") == kind and marker.get("fingerprint") == fingerprint:
            return "resume"
        return "holds a partial run made from other inputs or parameters"
    return "is not empty and holds no thresher artefact"


def _clear(directory: Path, kind: str) -> None:
    """Remove what an overwrite replaces: only the files thresher wrote (see :func:`thresher.stores.output_guard.clear_output`)."""
    from thresher.stores.output_guard import clear_output

    clear_output(directory, kind)
