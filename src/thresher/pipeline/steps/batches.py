"""The ``batches`` step: B3 batch mining (Thirukovalluru et al. 2025), batches of whole communities of a teacher's rank-window graph.

Stage: :func:`thresher.pipeline.select.select_batches`; algorithm: :mod:`thresher.selectors.batch_mining`.
The teacher's ranks come from the run's index (or exact search with ``exact: true``, for small pools).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from thresher.pipeline.steps._base import StepConfig, StepInputs, StepKind

VERSION = 4  # 2: above 250,000 rows, communities from METIS inside coarse regions (two levels); 3: regions of IVF lists;
#            4: an IVF teacher's depth chosen by window recall (teacher_recall)


class BatchesStep(StepConfig):
    """B3 batch mining (Thirukovalluru et al. 2025): batches of whole communities of a teacher's rank-window graph."""

    step: Literal["batches"]
    batch_size: int = Field(default=1024, gt=0, description="Rows per batch (a multiple of community_size).")
    community_size: int = Field(default=32, gt=0, description="Rows per METIS community; a batch holds whole communities.")
    rank_window: tuple[int, int] = Field(default=(30, 130), description="Teacher ranks P:P+M that become graph edges.")
    n_hard_negatives: int = Field(default=0, ge=0, description="Hard-negative ids per row, from its rank window.")
    group_column: str | None = Field(default=None, description="Pool column naming each row's source: a batch comes from one source.")
    drop_last: bool = Field(default=True, description="Drop the last, incomplete batch (--keep-last keeps it).")
    exact: bool = Field(default=False, description="Teacher ranks by exact search instead of the index (small pools).")
    partition: Literal["auto", "one_level", "two_level"] = Field(
        default="auto", description="METIS over the whole graph (one_level), or inside coarse k-means regions (two_level); "
                                    "auto: one level up to 250,000 rows.")
    part_rows: int = Field(default=100_000, gt=0, description="Two levels: rows per coarse region (the pool's rows / part_rows regions).")
    rank_scope: Literal["pool", "part"] = Field(
        default="pool", description="Teacher ranks among the whole pool (through the index), or among each part's rows "
                                    "(part: two levels, no index needed, cost linear in the pool).")
    teacher_recall: float | None = Field(
        default=0.95, gt=0, le=1, description="With an IVF index: the teacher probes the fewest lists whose rank windows hold this "
                                              "share of the exact ones (measured on 256 rows); null: the index's own depth.")
    seed: int = Field(default=0, description="Seed of the community order and batch assembly.")

    @model_validator(mode="after")
    def _window_holds_negatives(self) -> BatchesStep:
        p, stop = self.rank_window
        if not 0 <= p < stop:
            raise ValueError(f"rank_window must be [p, p + m] with 0 <= p < p + m; got {list(self.rank_window)}")
        if self.n_hard_negatives > stop - p:
            raise ValueError(f"n_hard_negatives {self.n_hard_negatives} is more than the rank window {list(self.rank_window)} holds "
                             f"(m = {stop - p}); hard negatives are drawn from that window")
        return self


class BatchesKind(StepKind):
    name = "batches"
    Config = BatchesStep
    version = VERSION
    fingerprint_tag = "b3"

    def uses_index(self, config: BatchesStep) -> bool:
        return not config.exact and config.rank_scope == "pool"

    def pool_columns(self, config: BatchesStep) -> list[str]:
        return [config.group_column] if config.group_column else []

    def check(self, config: BatchesStep, *, has_index: bool) -> str | None:
        if not has_index and self.uses_index(config):
            return ("batch mining needs the teacher's ranks from an index; add an 'index' section (or set exact: true for a small pool, "
                    "or rank_scope: part to rank each part's rows among themselves).")
        if config.rank_scope == "part" and config.partition == "one_level":
            return "rank_scope part ranks rows within parts, which one_level has none of: use partition two_level or auto."
        if config.batch_size % config.community_size:
            return f"batch_size {config.batch_size} is not a multiple of community_size {config.community_size}."
        return None

    def check_rows(self, config: BatchesStep, bound: int) -> str | None:
        if config.batch_size > bound:
            return f"batch_size {config.batch_size} is larger than the {bound} rows that at most reach this step."
        return None

    def rows_after(self, config: BatchesStep, bound: int | None) -> int | None:
        return None if bound is None else bound // config.batch_size * config.batch_size

    def expected_rows(self, config: BatchesStep, bound: int) -> str:
        return f"≤ {bound // config.batch_size * config.batch_size:,} ({bound // config.batch_size:,} batches of {config.batch_size})"

    def memory(self, config: BatchesStep, bound: int | None) -> str:
        from thresher.selectors.b3_partition import ONE_LEVEL_MAX_ROWS

        window = config.rank_window[1] - config.rank_window[0]
        rows = bound or 0
        two = config.partition == "two_level" or (config.partition == "auto" and (rows > ONE_LEVEL_MAX_ROWS or config.rank_scope == "part"))
        if not two:
            return f"driver: ~{rows * window * 12 / 2**30:.2f} GiB (rank windows + reciprocal graph of ≤ {rows:,} rows)"
        # a part: its rank windows (int32) and graph (~3 x the windows), METIS's copy of the graph; the driver: a few int64 per row
        part = min(rows, 2 * config.part_rows)
        return (f"driver: ~{rows * 48 / 2**30:.2f} GiB (regions, communities, batch columns of ≤ {rows:,} rows); "
                f"each worker: ~{part * window * 24 / 2**30:.2f} GiB (rank windows + graph of one region, ≤ ~{part:,} rows)"
                + (" + the index" if config.rank_scope == "pool" else " + the region's vectors"))

    def run(self, config: BatchesStep, inputs: StepInputs, executor: Any) -> Any:
        from thresher.pipeline.select import select_batches

        return select_batches(
            inputs.store, inputs.out, index=inputs.index if self.uses_index(config) else None, batch_size=config.batch_size,
            community_size=config.community_size, rank_window=tuple(config.rank_window), n_hard_negatives=config.n_hard_negatives,
            group_column=config.group_column, drop_last=config.drop_last, partition=config.partition, part_rows=config.part_rows,
            rank_scope=config.rank_scope, teacher_recall=config.teacher_recall,
            seed=config.seed, subset=inputs.subset,
            overwrite=inputs.overwrite, executor=executor,
        )


STEP = BatchesKind()
