"""The ``semdedup`` step: SemDeDup (Abbas et al. 2023), near-duplicates dropped within k-means clusters.

Stage: :func:`thresher.pipeline.dedup.select_semdedup`; algorithm: :mod:`thresher.selectors.semdedup`.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import Field, model_validator

from thresher.pipeline.steps._base import StepConfig, StepInputs, StepKind

VERSION = 2  # 2: a thread-invariant k-means (other centroids than FAISS's); mode


class SemDedupStep(StepConfig):
    """SemDeDup (Abbas et al. 2023): drop near-duplicates within k-means clusters."""

    step: Literal["semdedup"]
    n_clusters: int = Field(gt=0, description="k of the k-means (at most the pool's rows).")
    eps: float = Field(gt=0, lt=1, description="Remove a row whose cosine to an earlier row of its cluster is >= 1 - eps; in (0, 1).")
    sample_size: int | None = Field(default=None, gt=0, description="Rows the k-means is fitted on (default: min(rows, 256 x n_clusters)).")
    n_iter: int = Field(default=25, gt=0, description="k-means iterations.")
    seed: int = Field(default=0, description="Seed of the k-means sample and initialisation.")
    mode: Literal["paper", "exact"] = Field(
        default="paper",
        description="paper: the paper's rule, within each cluster against every earlier row; exact: a row goes when a kept row of any "
                    "cluster is within eps, so every removed row has a kept twin and no two kept rows are within eps.")

    @model_validator(mode="before")
    @classmethod
    def _old_clusters_key(cls, data: Any) -> Any:
        """``clusters`` is the old spelling of ``n_clusters`` (scikit-learn's name): accepted, with a note on stderr."""
        if isinstance(data, dict) and "clusters" in data:
            if "n_clusters" in data:
                raise ValueError("give n_clusters only (clusters is its old spelling)")
            print("note: semdedup key 'clusters' is deprecated; use 'n_clusters'", file=sys.stderr)
            data = {("n_clusters" if k == "clusters" else k): v for k, v in data.items()}
        return data


class SemDedupKind(StepKind):
    name = "semdedup"
    Config = SemDedupStep
    version = VERSION
    fingerprint_tag = "semdedup"

    def params(self, config: SemDedupStep) -> dict[str, Any]:
        # the keys runner caches were made under before n_clusters and n_iter: the same step keeps its cached output
        params = super().params(config)
        params["clusters"] = params.pop("n_clusters")
        if params["n_iter"] == SemDedupStep.model_fields["n_iter"].default:
            del params["n_iter"]
        if params["mode"] == "paper":
            del params["mode"]  # likewise from before there were modes
        return params

    def check_rows(self, config: SemDedupStep, bound: int) -> str | None:
        return f"{config.n_clusters} clusters for at most {bound} rows." if config.n_clusters > bound else None

    def memory(self, config: SemDedupStep, bound: int | None) -> str:
        from thresher.config import runtime_config

        settings = runtime_config()
        # clusters are rarely more than a few times their mean size; a block is at most block_rows of one cluster
        cluster = min(bound, 4 * -(-bound // config.n_clusters)) if bound else settings.partition_rows
        text = (f"worker: ~{min(settings.block_rows, cluster) * cluster * 12 / 2**20:,.0f} MiB "
                f"(block × cluster similarities for clusters of ~{cluster:,} rows)")
        if config.mode == "exact" and bound:
            text += (f"; exact mode: driver and each worker +{bound * ((config.n_clusters + 7) // 8) / 2**20:,.0f} MiB of near-cluster marks, "
                     "driver +24 B per near-duplicate pair")
        return text

    def run(self, config: SemDedupStep, inputs: StepInputs, executor: Any) -> Any:
        from thresher.pipeline.dedup import select_semdedup

        return select_semdedup(inputs.store, inputs.out, n_clusters=config.n_clusters, eps=config.eps, sample_size=config.sample_size,
                               n_iter=config.n_iter, seed=config.seed, mode=config.mode, subset=inputs.subset, overwrite=inputs.overwrite,
                               executor=executor)


STEP = SemDedupKind()
