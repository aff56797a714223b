"""One guard for every output thresher writes: where it may write, and what ``overwrite`` may remove.

Every writer (``embed``, ``build_index``, the ``select_*`` stages, ``write_plan``,
``InfoBatch.save``, ``run_pipeline``, ``run_demo``, ``write_report``) calls
:func:`check_output` before any work and before any directory is made. An
output may be

* a path that does not exist yet (its parents are made later);
* an empty directory;
* a thresher artefact of the same kind: resumed or reused by fingerprint, or,
  with ``overwrite``, replaced — and then only if everything in it is
  something thresher wrote.

It is never, even with ``overwrite``: ``/``, a home directory, a system
directory or anything inside one (symlinks resolved first); a directory
holding files thresher did not write; an artefact of another kind; an input,
a directory containing an input, or a path inside an input directory.

:func:`clear_output` is what ``overwrite`` does: it removes only the files
thresher wrote — those the manifest lists, thresher's markers, temporaries and
lock, the files of an interrupted run that follow thresher's own naming, and
for a run directory each sub-artefact by its own manifest — and refuses,
deleting nothing, when anything else is there. A directory is never removed
because it holds a familiar name.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from thresher.exceptions import ArtifactError, ParameterError

OutputKind = Literal["embeddings", "index", "curated", "run", "infobatch", "report"]

MANIFEST_NAME = "manifest.json"  # the same names as thresher.stores.manifest (imported lazily there: no cycle)
PARTIAL_NAME = ".thresher-partial.json"
LOCK_NAME = ".thresher-lock.json"
TMP_PREFIX = ".tmp-"
INFOBATCH_STATE = "infobatch.json"

#: Written into every HTML report's <head>: an existing file is replaced by ``report --html`` only if it carries it.
REPORT_MARKER = '<meta name="generator" content="thresher report">'

# Directories of the operating system: never an output, nor anything inside them (temporary directories excepted).
_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin", "/sys", "/usr",
                "/var", "/snap", "/System", "/Library", "/Applications", "/private/etc", "/private/var", "/cores")
# Top-level directories that hold other people's things: never an output themselves (their insides are fine).
_TOP_LEVEL = ("/home", "/Users", "/root", "/mnt", "/media", "/opt", "/srv", "/tmp", "/Volumes", "/private", "/private/tmp")

# The files an interrupted job of each kind leaves, by thresher's own naming (no manifest lists them yet).
_PARTIAL_FILES = {
    "embeddings": re.compile(r"part-\d{5,}\.arrow|\.part-\d{5,}\.arrow\.done\.json"),
    "curated": re.compile(r"part-\d{5,}\.arrow|removed\.arrow|targets\.arrow"),
    "index": re.compile(r"index\.faiss|ids\.arrow"),
    "infobatch": re.compile(r"infobatch\.json|scores\.npy|active_kept_well\.npy"),
}
_STAGING = ".staging"  # curated shards' per-partition staging folder
_STAGING_FILE = re.compile(r"stage-\d{5,}\.arrow")
_RUN_STEP_DIR = re.compile(r"\d{2,}-[A-Za-z0-9_.-]+")
_RUN_TARGET_FILE = re.compile(r"task-\d{3,}\.jsonl")
_RUN_FILES = ("events.jsonl", "report.html")
_RUN_SUBDIRS = {"embeddings": "embeddings", "index": "index"}

# Python parameter -> CLI option, where the two differ.
_CLI_NAMES = {"html_path": "--html", "ib_or_scores": "--scores", "loss_dirs": "--losses", "spec_path": "SPEC", "path": "PATH",
              "store": "--embeddings", "directory": "--out"}


def check_output(
    path: str | Path,
    kind: OutputKind,
    *,
    inputs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    new: bool = False,
    name: str = "out",
) -> Path:
    """Refuse an output path thresher must not write, before any work is done; returns it.

    Parameters
    ----------
    path : path
        The output: a directory for an artefact, a file for a report.
    kind : "embeddings", "index", "curated", "run", "infobatch" or "report"
        What will be written there. An existing artefact of another kind is refused.
    inputs : mapping of parameter name to a path, a list of paths, or None
        Everything the writer reads. The output may not be one, contain one, or
        lie inside an input directory (for a report: may not be one). Values
        that are not local paths (URLs, arrays, datasets) are skipped.
    overwrite : bool
        The writer will replace an existing artefact of the same kind: refused
        when anything in it is not thresher's (naming the first such file).
    new : bool
        Refuse an existing artefact of the same kind too (nothing to resume or replace).
    name : str
        The parameter holding ``path``, for messages (``--out`` from the CLI).
    """
    text = os.fspath(path)
    if "://" in text:  # remote outputs (fsspec) are the store's business
        return Path(text)
    label = f"{_label(name)} {text}"
    resolved = Path(os.path.realpath(os.path.expanduser(text)))
    check_location(resolved, label)
    _check_inputs(resolved, kind, inputs or {}, label)
    if kind == "report":
        _check_report_file(resolved, label)
        return Path(text)
    if resolved.exists() and not resolved.is_dir():
        raise ArtifactError(f"{label} is a file, not a directory; choose a directory for the output.")
    if resolved.is_dir():
        _check_content(resolved, kind, label, overwrite=overwrite, new=new)
    return Path(text)


def check_location(resolved: Path, label: str) -> None:
    """Refuse ``/``, a home directory, a top-level or system directory, and anything inside a system directory."""
    where = _forbidden(resolved)
    if where:
        raise ParameterError(f"{label} is {where}; thresher never writes there, even with --overwrite. Choose a directory of your own.")


def clear_output(directory: str | Path, kind: OutputKind) -> None:
    """Remove what thresher wrote in ``directory`` (an artefact of ``kind``), keeping the write lock; refuse if anything else is there.

    Nothing is deleted when a file thresher did not write is found: the
    message names it.
    """
    directory = Path(directory)
    owned, foreign = _inventory(directory, kind, top=True)
    if foreign is not None:
        raise ArtifactError(f"Refusing to overwrite {directory}: it holds {foreign}, which thresher did not write; "
                            "move it away or choose another directory.")
    for path in sorted(owned, key=lambda p: len(p.parts), reverse=True):  # files and folders, deepest first
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


def artefact_inputs(path: Any) -> list[str]:
    """The local pool files an artefact (an embedding store) was made from, as its manifest records them; [] if unknown."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_NAME).read_text(encoding="utf-8"))
        pool = manifest.get("pool") or {}
        sources = [p.get("source") for p in pool.get("partitions", [])] + list(pool.get("dataset_files") or [])
    except (OSError, ValueError, TypeError, AttributeError):
        return []
    return sorted({s for s in sources if isinstance(s, str) and s and "://" not in s})


# -- location ------------------------------------------------------------------------------------------


def _forbidden(resolved: Path) -> str | None:
    text = str(resolved)
    if resolved == Path(resolved.anchor):
        return "the filesystem root"
    if resolved in _homes():
        return "a home directory"
    if text in _TOP_LEVEL:
        return "a top-level system directory"
    temp = _temp_roots()
    for root in _SYSTEM_DIRS:
        if text == root or text.startswith(root + os.sep):
            if any(resolved == t or t in resolved.parents for t in temp):
                return None
            return f"inside the system directory {root}" if text != root else "a system directory"
    return None


def _homes() -> set[Path]:
    homes = {Path("/root")}
    for value in (os.environ.get("HOME"), os.path.expanduser("~")):
        if value:
            homes.add(Path(os.path.realpath(value)))
    for parent in ("/home", "/Users"):
        try:
            homes.update(Path(os.path.realpath(p)) for p in Path(parent).iterdir())
        except OSError:
            pass
    try:
        import pwd

        homes.update(Path(os.path.realpath(p.pw_dir)) for p in pwd.getpwall() if p.pw_dir)
    except (ImportError, OSError):
        pass
    return homes


def _temp_roots() -> list[Path]:
    return [Path(os.path.realpath(p)) for p in {tempfile.gettempdir(), "/var/tmp", "/tmp"}]


# -- inputs --------------------------------------------------------------------------------------------


def _check_inputs(resolved: Path, kind: str, inputs: Mapping[str, Any], label: str) -> None:
    for name, values in inputs.items():
        for value in _paths(values):
            source = Path(os.path.realpath(os.path.expanduser(value)))
            if source == resolved:
                raise ParameterError(f"{label} is the input {_label(name)} {value}; write the output to another "
                                     f"{'file' if kind == 'report' else 'directory'}.")
            if kind == "report":
                continue
            if resolved in source.parents:
                raise ParameterError(f"{label} contains the input {_label(name)} {value}; write the output to another directory.")
            if source.is_dir() and source in resolved.parents:
                raise ParameterError(f"{label} is inside the input {_label(name)} {value}; write the output to another directory.")


def _paths(values: Any) -> Iterable[str]:
    if values is None:
        return
    if isinstance(values, Mapping):
        values = list(values.values())
    if not isinstance(values, (list, tuple, set)):
        values = [values]
    for value in values:
        if isinstance(value, (list, tuple, set, Mapping)):
            yield from _paths(value)
            continue
        if not isinstance(value, (str, os.PathLike)):
            continue  # arrays, datasets, open stores' objects: not paths
        text = os.fspath(value)
        if not text or "://" in text:
            continue
        if glob.has_magic(text):
            yield from glob.glob(os.path.expanduser(text))
        else:
            yield text


# -- what is already there -----------------------------------------------------------------------------


def _check_content(resolved: Path, kind: str, label: str, *, overwrite: bool, new: bool) -> None:
    found = _kind_of(resolved)
    if found is None:
        entries = _entries(resolved)
        if not entries:
            return
        more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
        raise ArtifactError(f"{label} is not empty and holds no thresher artefact (it holds {entries[0].name!r}{more}); "
                            "choose another directory.")
    if found.startswith("?"):
        raise ArtifactError(f"{label} holds {found[1:]}, which thresher did not write; choose another directory.")
    if found != kind:
        raise ArtifactError(f"{label} holds {_a(found)} {found!r} artefact, not {_a(kind)} {kind!r}; choose another directory.")
    if new:
        what = "an InfoBatch state" if kind == "infobatch" else f"{_a(kind)} {kind!r} artefact"
        raise ArtifactError(f"{label} already holds {what}; choose another directory.")
    if overwrite:
        _, foreign = _inventory(resolved, kind, top=True)
        if foreign is not None:
            raise ArtifactError(f"{label} holds {foreign}, which thresher did not write; --overwrite removes only thresher's own files, "
                                "so move it away or choose another directory.")


def _kind_of(directory: Path) -> str | None:
    """The kind of artefact ``directory`` holds (finished or partial); None for none; '?<why>' for an impostor."""
    manifest = directory / MANIFEST_NAME
    if manifest.exists():
        try:
            found = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return f"?{manifest} (not a readable JSON manifest)"
        if not isinstance(found, dict) or not isinstance(found.get("artifact"), str):
            return f"?{manifest} (not a thresher manifest)"
        return found["artifact"]
    partial = directory / PARTIAL_NAME
    if partial.exists():
        try:
            marker = json.loads(partial.read_text(encoding="utf-8"))
            return str(marker["artifact"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return f"?{partial} (an unreadable partial-run marker)"
    if (directory / INFOBATCH_STATE).is_file():
        return "infobatch"
    return None


def _entries(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.name != LOCK_NAME), key=lambda p: p.name)


def _inventory(directory: Path, kind: str, *, top: bool) -> tuple[list[Path], str | None]:
    """(what thresher wrote in ``directory``, the first thing it did not — a path — or None).

    The top-level lock is left out of what is returned: it belongs to the job doing the overwrite.
    """
    owned: list[Path] = []
    if not directory.exists():
        return owned, None
    found = _kind_of(directory)
    entries = list(directory.iterdir())
    if found is None and not [e for e in entries if e.name != LOCK_NAME]:
        return ([] if top else [*entries, directory]), None
    if found is None or found.startswith("?") or found != kind:
        return owned, str(directory / MANIFEST_NAME) if found and found.startswith("?") else str(directory)
    listed = _listed(directory, kind)
    for entry in sorted(entries, key=lambda p: p.name):
        name = entry.name
        if name == LOCK_NAME:
            if not top:
                owned.append(entry)
            continue
        if name in (MANIFEST_NAME, PARTIAL_NAME) or (name.startswith(TMP_PREFIX) and entry.is_file()):
            owned.append(entry)
            continue
        if entry.is_symlink():
            return owned, str(entry)
        sub, foreign = _owned_entry(entry, kind, listed)
        if foreign is not None:
            return owned, foreign
        if sub is None:
            return owned, str(entry)
        owned.extend(sub)
    if not top:
        owned.append(directory)
    return owned, None


def _listed(directory: Path, kind: str) -> set[str] | None:
    """Names the finished artefact's manifest lists; None for a partial run (judged by thresher's naming)."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = {s.get("file") for s in [*manifest.get("shards", []), *manifest.get("attachments", [])] if isinstance(s, dict)}
    names |= set(manifest.get("files") or {})
    if kind == "run":
        names |= {str(s.get("dir", "")).split("/")[0] for s in manifest.get("steps", []) if isinstance(s, dict)}
        names |= {manifest.get("report"), manifest.get("events")}
    return {n for n in names if isinstance(n, str) and n}


def _owned_entry(entry: Path, kind: str, listed: set[str] | None) -> tuple[list[Path] | None, str | None]:
    """Whether one entry of an artefact directory is thresher's: (its paths to remove, None), (None, None) if not, or (None, foreign)."""
    name = entry.name
    if kind == "run":
        return _owned_run_entry(entry, listed)
    # `thresher report` writes its page into the artefact by default, and with --explore the explore page beside it
    if name in ("report.html", "explore.html") and entry.is_file() and _is_report(entry):
        return [entry], None
    if kind == "curated" and name == _STAGING and entry.is_dir():
        return _owned_plain_dir(entry, _STAGING_FILE)
    if entry.is_file() and (name in listed if listed is not None else bool(_PARTIAL_FILES.get(kind, re.compile("(?!)")).fullmatch(name))):
        return [entry], None
    return None, None


def _owned_run_entry(entry: Path, listed: set[str] | None) -> tuple[list[Path] | None, str | None]:
    name = entry.name
    if name == "explore.html" and entry.is_file() and _is_report(entry):  # `thresher explore RUN` writes it beside report.html
        return [entry], None
    if listed is not None and name not in listed and name not in ("targets", "steps"):
        return None, None
    if name in _RUN_FILES and entry.is_file():
        return [entry], None
    if name in _RUN_SUBDIRS and entry.is_dir():
        return _inventory(entry, _RUN_SUBDIRS[name], top=False)
    if name == "steps" and entry.is_dir():
        owned: list[Path] = []
        for step in entry.iterdir():
            if not (_RUN_STEP_DIR.fullmatch(step.name) and step.is_dir() and not step.is_symlink()):
                return None, str(step)
            sub, foreign = _inventory(step, "curated", top=False)
            if foreign is not None:
                return None, foreign
            owned.extend(sub)
        return [*owned, entry], None
    if name == "targets" and entry.is_dir():
        owned = []
        for task_dir in entry.iterdir():
            if not task_dir.is_dir() or task_dir.is_symlink():
                return None, str(task_dir)
            sub, foreign = _owned_plain_dir(task_dir, _RUN_TARGET_FILE)
            if foreign is not None:
                return None, foreign
            owned.extend(sub)
        return [*owned, entry], None
    return None, None


def _owned_plain_dir(directory: Path, pattern: re.Pattern[str]) -> tuple[list[Path] | None, str | None]:
    owned = []
    for child in directory.iterdir():
        if child.is_file() and not child.is_symlink() and (pattern.fullmatch(child.name) or child.name.startswith(TMP_PREFIX)):
            owned.append(child)
        else:
            return None, str(child)
    return [*owned, directory], None


# -- reports -------------------------------------------------------------------------------------------


def _check_report_file(resolved: Path, label: str) -> None:
    if resolved.is_dir():
        raise ArtifactError(f"{label} is a directory; give the report's file name (e.g. {resolved / 'report.html'}).")
    name = resolved.name
    if name in (MANIFEST_NAME, PARTIAL_NAME, LOCK_NAME, INFOBATCH_STATE) or name.startswith(TMP_PREFIX):
        raise ArtifactError(f"{label} is a file thresher keeps for its artefacts ({name}); write the report to another file.")
    parent = resolved.parent
    kind = _kind_of(parent) if parent.is_dir() else None
    if kind is not None and not kind.startswith("?"):
        listed = _listed(parent, kind) or set()
        partial = _PARTIAL_FILES.get(kind)
        if (name in listed and name not in _RUN_FILES) or (partial is not None and partial.fullmatch(name)):
            raise ArtifactError(f"{label} is a file of the {kind!r} artefact in {parent}; write the report to another file.")
    if not resolved.exists():
        return
    if not resolved.is_file():
        raise ArtifactError(f"{label} exists and is not a regular file; write the report to another file.")
    if kind == "run" and name == "report.html":
        return  # the run's own page, rewritten by each run of the pipeline
    if not _is_report(resolved):
        raise ArtifactError(f"{label} exists and is not a report thresher wrote; write the report to a new file.")


def _is_report(path: Path) -> bool:
    """Whether ``path`` is an HTML report thresher wrote (it carries :data:`REPORT_MARKER` in its head)."""
    try:
        with open(path, "rb") as f:
            return REPORT_MARKER.encode("utf-8") in f.read(2048)
    except OSError:
        return False


# -- messages ------------------------------------------------------------------------------------------


def _label(name: str) -> str:
    """``--out`` when a CLI command is running, else the Python parameter ``'out'``."""
    if name == "pool_files":
        return "pool file"
    try:
        import click

        cli = click.get_current_context(silent=True) is not None
    except ImportError:
        cli = False
    if not cli:
        return repr(name) if name.isidentifier() else name
    if name in _CLI_NAMES:
        return _CLI_NAMES[name]
    return "--" + name.replace("_", "-") if name.isidentifier() else name


def _a(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"
