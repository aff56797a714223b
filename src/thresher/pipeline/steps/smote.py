"""The ``smote`` step: SMOTE (Chawla et al. 2002) in embedding space, with optional under-sampling of the majority.

Stage: :func:`thresher.pipeline.smote.select_smote`; algorithm: :mod:`thresher.selectors.smote`.
Its output holds synthetic rows, which are not pool rows: no step may take its rows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from thresher.pipeline.steps._base import StepConfig, StepInputs, StepKind

VERSION = 3  # 2: synthetic rows have ids; 3: a large class's IVF lists from a thread-invariant k-means


class SMOTEStep(StepConfig):
    """SMOTE (Chawla et al. 2002) in embedding space, with optional random under-sampling of the majority."""

    step: Literal["smote"]
    labels: str = Field(description="The pool column holding each row's class.")
    sampling_strategy: str | float | dict[str, int] = Field(
        default="auto", description="auto, 'not majority', minority, 'not minority', all; a float (binary: minority = it x majority); "
                                    "or JSON {\"class\": target count}.")
    undersample_majority: float | None = Field(default=None, gt=0, le=1, description="Keep this fraction, in (0, 1], of the majority class's rows.")
    k_neighbors: int = Field(default=5, gt=0, description="Same-class neighbours a synthetic row's second parent is drawn from.")
    neighbors: Literal["auto", "exact"] = Field(default="auto", description="auto: exact FAISS search up to 100k rows a class, "
                                                                           "an approximate index above; exact: always exact.")
    seed: int = Field(default=0, description="Seed of the synthetic rows and the under-sampling.")


class SMOTEKind(StepKind):
    name = "smote"
    Config = SMOTEStep
    version = VERSION
    fingerprint_tag = "smote"
    keeps_pool_rows = False

    def params(self, config: SMOTEStep) -> dict[str, Any]:
        params = super().params(config)
        if params["neighbors"] == "auto":  # the key runner caches were made under before neighbors was a spec key
            del params["neighbors"]
        return params

    def pool_columns(self, config: SMOTEStep) -> list[str]:
        return [config.labels]

    def rows_after(self, config: SMOTEStep, bound: int | None) -> int | None:
        return None

    def expected_rows(self, config: SMOTEStep, bound: int) -> str:
        return f"≥ {bound:,} (minorities grown)" if config.undersample_majority is None else "classes balanced"

    def memory(self, config: SMOTEStep, bound: int | None) -> str:
        return f"driver: the input rows' vectors (≤ {bound:,} × dim × 4 B) + one class's neighbour index"

    def run(self, config: SMOTEStep, inputs: StepInputs, executor: Any) -> Any:
        from thresher.pipeline.smote import select_smote

        return select_smote(inputs.store, inputs.out, labels=config.labels, sampling_strategy=config.sampling_strategy,
                            undersample_majority=config.undersample_majority, k_neighbors=config.k_neighbors, neighbors=config.neighbors,
                            seed=config.seed,
                            subset=inputs.subset, overwrite=inputs.overwrite, executor=executor)


STEP = SMOTEKind()
