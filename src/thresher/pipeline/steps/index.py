"""The ``index`` stage: the FAISS index over the run's embedding store, ``<run>/index`` (when the spec has an ``index`` section).

Stage: :func:`thresher.stores.index.build_index`. Its run fingerprint is the
index section's settings over the embedding's fingerprint; steps that read it
(B3's teacher ranks) fingerprint on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thresher.pipeline.steps._base import StageKind, StepInputs


class IndexKind(StageKind):
    name = "index"
    keeps_pool_rows = False  # vectors, not rows: no step takes its rows

    @property
    def version(self) -> int:
        from thresher.stores.index import INDEX_VERSION

        return INDEX_VERSION

    def upstream(self, config: Any, spec: Any) -> list[str]:
        return ["embed"]

    def plan_fingerprint(self, config: Any, upstream: list[str]) -> str:
        from thresher.fingerprint import fingerprint_of

        return fingerprint_of("index", self.version, config.model_dump(mode="json"), upstream)

    def expected_rows(self, config: Any, bound: int) -> str:
        return f"{bound:,} vectors ({config.type})"

    def memory(self, config: Any, bound: int | None) -> str:
        return "the index's size (see `thresher inspect`)"

    def open_cached(self, config: Any, directory: Path) -> Any:
        from thresher.stores.index import open_index

        return open_index(directory)

    def run(self, config: Any, inputs: StepInputs, executor: Any) -> Any:
        from thresher.stores.index import build_index

        return build_index(inputs.store, inputs.out, index_type=config.type, metric=config.metric, nprobe=config.nprobe,
                           ef_search=config.ef_search, train_size=config.train_size, seed=config.seed, overwrite=inputs.overwrite)

    def rows_out(self, output: Any) -> int:
        return len(output)


STAGE = IndexKind()
