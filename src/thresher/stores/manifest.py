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
import shutil
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
    """One shard file of an artefact: its name, row count and content checksum."""

    file: str
    rows: int
    checksum: str

    @classmethod
    def of(cls, path: str | Path, rows: int) -> ShardInfo:
        path = Path(path)
        return cls(file=path.name, rows=int(rows), checksum=f"xxh3_128:{hash_file(path)}")


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


def verify_shards(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Check every shard (and attached table, e.g. SemDeDup's removed.arrow) exists with the recorded checksum; name the first bad one."""
    directory = Path(directory)
    for shard in [*manifest.get("shards", []), *manifest.get("attachments", [])]:
        path = directory / shard["file"]
        if not path.is_file():
            raise ArtifactError(f"Shard {path} listed in the manifest is missing.")
        algo, _, expected = shard["checksum"].partition(":")
        actual = hash_file(path)
        if actual != expected:
            raise ArtifactError(f"Shard {path} is corrupt or truncated: its {algo} checksum is {actual}, the manifest says {expected}.")


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
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"Output path {directory} exists and is not a directory.")
    if directory.is_dir() and any(p.name != LOCK_NAME for p in directory.iterdir()):
        state = _existing_state(directory, kind, fingerprint)
        if state in ("complete", "resume"):
            remove_temporaries(directory)
            return state
        if not overwrite:
            raise ArtifactError(f"Output directory {directory} {state}; choose another directory or pass overwrite=True (--overwrite).")
        _clear(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / PARTIAL_NAME, {"artifact": kind, "fingerprint": fingerprint})
    return "new"


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


def _clear(directory: Path) -> None:
    """Remove what an overwrite replaces: only a directory thresher itself made is cleared."""
    if not ((directory / MANIFEST_NAME).exists() or (directory / PARTIAL_NAME).exists()):
        raise ArtifactError(f"Refusing to overwrite {directory}: it holds files thresher did not write.")
    for child in directory.iterdir():
        if child.name == LOCK_NAME:  # held by the job doing the overwrite
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
