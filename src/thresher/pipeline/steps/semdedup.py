"""The ``semdedup`` step: SemDeDup (Abbas et al. 2023), near-duplicates dropped within k-means clusters.

Stage: :func:`thresher.pipeline.dedup.select_semdedup`; algorithm: :mod:`thresher.selectors.semdedup`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from thresher.pipeline.steps._base import StepConfig, StepInputs, StepKind

VERSION = 1


class SemDedupStep(StepConfig):
    """SemDeDup (Abbas et al. 2023): drop near-duplicates within k-means clusters."""

    step: Literal["semdedup"]
    clusters: int = Field(gt=0)
    eps: float = Field(gt=0, lt=1)
    sample_size: int | None = Field(default=None, gt=0)
    seed: int = 0


class SemDedupKind(StepKind):
    name = "semdedup"
    Config = SemDedupStep
    version = VERSION
    fingerprint_tag = "semdedup"

    def check_rows(self, config: SemDedupStep, bound: int) -> str | None:
        return f"{config.clusters} clusters for at most {bound} rows." if config.clusters > bound else None

    def memory(self, config: SemDedupStep, bound: int | None) -> str:
        from thresher.config import runtime_config

        settings = runtime_config()
        # clusters are rarely more than a few times their mean size; a block is at most block_rows of one cluster
        cluster = min(bound, 4 * -(-bound // config.clusters)) if bound else settings.partition_rows
        return (f"worker: ~{min(settings.block_rows, cluster) * cluster * 12 / 2**20:,.0f} MiB "
                f"(block × cluster similarities for clusters of ~{cluster:,} rows)")

    def run(self, config: SemDedupStep, inputs: StepInputs, executor: Any) -> Any:
        from thresher.pipeline.dedup import select_semdedup

        return select_semdedup(inputs.store.path, inputs.out, n_clusters=config.clusters, eps=config.eps, sample_size=config.sample_size,
                               seed=config.seed, subset=inputs.subset, overwrite=inputs.overwrite, executor=executor)


STEP = SemDedupKind()
