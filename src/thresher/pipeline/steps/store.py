"""The ``store`` stage: an existing embedding store used in place of embedding the pool (issue 13).

A spec's ``embedding: {store: DIR}`` (or ``thresher run --embeddings DIR``)
names a store made elsewhere: by ``thresher embed``, by ``thresher embeddings
import`` from vectors computed on accelerators, or by any writer of the format.
The run reads it where it is: nothing is copied, ``<run>/embeddings`` is not
written, and the run manifest records the store's path and fingerprint. Its
model, pooling and dim are the store manifest's (the spec gives no model keys
beside ``store``).

- **The pool's ids must be the store's, in the pool's order.** thresher takes
  pool rows by store position (curated shards join the pool's columns by row
  offset), so the two are compared id by id, streaming, and a mismatch is
  refused naming an id in one and not the other
  (:func:`thresher.stores.pool_binding.check_same_ids`). The check is skipped
  when the store was embedded from this very pool (its manifest records the
  pool's fingerprint) or when the run directory's last run checked this store
  against this pool.
- **Fingerprint**: the store's own when it was embedded from this very pool —
  the run is then the run that embeds the pool itself with the store's
  settings, and shares its cached steps — otherwise the store's and the pool's
  fingerprints together, so a change to either (new vectors, or new pool
  columns under the same ids) recomputes every step downstream.
- **A store changed since it was finished** (a shard replaced, truncated or
  removed) is refused, naming the file: it is the user's, and cannot be
  recomputed here.
- The stages read the spec's pool beside the store
  (:class:`thresher.stores.pool_binding.PoolBoundStore`), not the pool the
  store's manifest records (an imported store records none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.pipeline.steps._base import SourceKind, StepInputs

VERSION = 1


@dataclass(frozen=True)
class StoreSource:
    """The store stage's config: the store read beside the spec's pool, and the run's fingerprint of it."""

    store: Any  # thresher.stores.pool_binding.PoolBoundStore
    fingerprint: str

    @property
    def pool(self) -> Any:
        return self.store.pool


class StoreKind(SourceKind):
    name = "store"
    version = VERSION
    cached_by = "manifest"

    def prepare(self, spec: Any, run_dir: Path) -> StoreSource:
        from thresher.fingerprint import fingerprint_of
        from thresher.stores.pool import open_pool
        from thresher.stores.pool_binding import bind_pool

        store = _open_intact(Path(spec.embedding.store))
        p = spec.pool
        pool = open_pool(p.path, format=p.format, id_column=p.id_column, partition_rows=p.partition_rows, split=p.split)
        embedded_from_it = (store.manifest.get("pool") or {}).get("fingerprint") == pool.fingerprint
        fingerprint = store.fingerprint if embedded_from_it else fingerprint_of(self.name, self.version, {}, [store.fingerprint, pool.fingerprint])
        checked = _checked_before(run_dir, store, pool)
        bound = bind_pool(store, pool, text=_text(spec, store), check_ids=not (embedded_from_it or checked))
        return StoreSource(bound, fingerprint)

    def input_files(self, spec: Any) -> dict[str, Any]:
        return {"embedding.store": spec.embedding.store}

    def directory(self, config: StoreSource) -> str:
        return str(config.store.path)

    def plan_fingerprint(self, config: StoreSource, upstream: list[str]) -> str:
        return config.fingerprint

    def expected_rows(self, config: StoreSource, bound: int) -> str:
        return f"{bound:,} rows × {config.store.dim}"

    def memory(self, config: StoreSource, bound: int | None) -> str:
        return "none (read in place)"

    def status(self, cached: bool) -> str:
        return "existing store"

    def is_cached(self, directory: Path, fingerprint: str) -> bool:
        return True  # nothing to compute: the store is there (and intact: checked by prepare)

    def holds_other(self, directory: Path, fingerprint: str) -> bool:
        return False

    def damaged(self, directory: Path, problem: str) -> str:
        from thresher.exceptions import ArtifactError

        raise ArtifactError(_changed(directory, problem))

    def open_cached(self, config: StoreSource, directory: Path) -> Any:
        return config.store

    def run(self, config: StoreSource, inputs: StepInputs, executor: Any) -> Any:
        return config.store

    def run_manifest(self, output: Any) -> dict[str, Any]:
        return {"embedding_store": {"path": str(output.path), "fingerprint": output.fingerprint,
                                    "pool_fingerprint": output.pool.fingerprint, "ids": "the pool's, in the pool's order"}}


STAGE = StoreKind()


def _open_intact(path: Path) -> Any:
    """The store at ``path``, refused (naming the file) when a file changed since it was finished."""
    from thresher.exceptions import ArtifactError
    from thresher.pipeline.spec import SpecError
    from thresher.stores.embedding_store import open_embedding_store
    from thresher.stores.manifest import damage

    if not path.is_dir():
        raise SpecError(f"embedding.store {path}: no such directory; name an embedding store (made by `thresher embed` or "
                        "`thresher embeddings import`).")
    store = open_embedding_store(path)
    problem = damage(path)
    if problem is not None:
        raise ArtifactError(_changed(path, problem))
    return store


def _changed(path: Path, problem: str) -> str:
    return (f"The embedding store {path} changed since it was finished ({problem}); a run reads it in place and cannot "
            "rebuild it: restore the store, or make it again (`thresher embed` or `thresher embeddings import`).")


def _checked_before(run_dir: Path, store: Any, pool: Any) -> bool:
    """True when the run directory's last finished run used this store (same fingerprint) beside this pool (same fingerprint)."""
    import json

    try:
        recorded = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("embedding_store") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return (recorded.get("path") == str(store.path) and recorded.get("fingerprint") == store.fingerprint
            and recorded.get("pool_fingerprint") == pool.fingerprint)


def _text(spec: Any, store: Any) -> dict[str, Any] | None:
    """How the store's rows became text (target files are embedded the same way): the store's record, else the pool section's keys.

    A store that records it keeps it; pool text keys that say otherwise are refused, naming both.
    """
    from thresher.pipeline.spec import SpecError
    from thresher.pipeline.text import TextBuilder

    p = spec.pool
    given = None
    if p.text is not None or p.text_column is not None or p.messages_column is not None:
        given = TextBuilder(p.text, text_column=p.text_column, messages_column=p.messages_column, chat_format=p.chat_format).describe()
    recorded = store.manifest.get("text")
    if recorded and given and recorded != given:
        raise SpecError(f"pool text keys ({given}) differ from how the rows of embedding.store {store.path} became text ({recorded}); "
                        "drop them from the pool section (the store's are used) or use a store embedded that way.")
    return None if recorded else given
