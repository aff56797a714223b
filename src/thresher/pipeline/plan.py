"""InfoBatch epoch plans as shards, for trainers on a cluster (Qin et al., ICLR 2024; see thresher.selectors.infobatch).

The loop on a cluster, one round per epoch:

1. ``write_plan(state_dir, epoch, plans/epoch-E)`` writes the epoch's plan as
   curated-style Arrow IPC stream shards with columns ``index`` (int64 sample
   index), ``weight`` (float32 loss weight), ``epoch`` (int64) and
   ``position`` (int64, the order to train in), plus a ``curated`` manifest
   with ``selector: "infobatch"`` and the plan's statistics.
2. Trainers read the shards (``open_curated(dir).to_hf_dataset()`` or
   pyarrow), train with ``mean(weight * loss)``, and write their per-sample
   losses with :func:`thresher.training.infobatch.write_loss_shard`
   (``index`` int64, ``loss`` float32).
3. ``update_state(state_dir, losses_dir)`` (or
   :func:`thresher.training.infobatch.apply_loss_shards`) feeds the losses back.

The state directory is read and written by :mod:`thresher.training.infobatch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.exceptions import ParameterError
from thresher.fingerprint import fingerprint_of, hash_bytes
from thresher.selectors.infobatch import InfoBatch
from thresher.stores.arrow_io import write_stream_shard
from thresher.stores.curated import CuratedShards, open_curated, shard_name
from thresher.stores.lock import locks_output
from thresher.stores.manifest import ShardInfo, prepare_output_dir, write_manifest
from thresher.training.infobatch import apply_loss_shards, load_state, save_state

PLAN_STAGE_VERSION = 1
PLAN_COLUMNS = ["index", "weight", "epoch", "position"]
DEFAULT_ROWS_PER_SHARD = 1_000_000


def _as_infobatch(ib_or_scores: InfoBatch | str | Path) -> InfoBatch:
    if isinstance(ib_or_scores, InfoBatch):
        return ib_or_scores
    if isinstance(ib_or_scores, (str, Path)):
        return load_state(ib_or_scores)
    raise ParameterError(
        f"The 'ib_or_scores' parameter of write_plan must be an InfoBatch or a saved InfoBatch state directory; got {type(ib_or_scores).__name__}."
    )


def _check_plan_output(arguments: dict[str, Any]) -> None:
    from thresher.stores.output_guard import check_output

    check_output(arguments["out"], "curated", inputs={"ib_or_scores": arguments["ib_or_scores"]}, overwrite=arguments["overwrite"])


@locks_output("out", check=_check_plan_output)
def write_plan(
    ib_or_scores: InfoBatch | str | Path,
    epoch: int,
    out: str | Path,
    *,
    rows_per_shard: int | None = None,
    overwrite: bool = False,
) -> CuratedShards:
    """Start ``epoch`` of an InfoBatch run and write its plan to ``out`` as shards with a manifest.

    Parameters
    ----------
    ib_or_scores : InfoBatch or path
        The run, or a directory written by :meth:`InfoBatch.save`. A state
        directory gets the epoch's report added to its history (saved back).
    epoch : int
        In [0, epochs).
    out : path
        Output directory; a finished plan of the same scores and epoch there is reused.
    rows_per_shard : int, default 1,000,000
        A plan row is 28 bytes, so a default shard is about 28 MB.

    Returns
    -------
    CuratedShards
        Rows in training order: ``index``, ``weight``, ``epoch``, ``position``.
    """
    ib = _as_infobatch(ib_or_scores)
    if rows_per_shard is None:
        rows_per_shard = DEFAULT_ROWS_PER_SHARD
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, (int, np.integer)) or rows_per_shard < 1:
        raise ParameterError(f"The 'rows_per_shard' parameter of write_plan must be an int >= 1; got {rows_per_shard!r}.")
    plan = ib.start_epoch(epoch)

    out = Path(out)
    params = {**ib.get_params(), "epoch": plan.epoch}
    scores_fp = hash_bytes(np.ascontiguousarray(ib.scores).tobytes())
    fingerprint = fingerprint_of("infobatch_plan", PLAN_STAGE_VERSION, params, [scores_fp])
    state = prepare_output_dir(out, "curated", fingerprint, overwrite=overwrite)
    if isinstance(ib_or_scores, (str, Path)):  # only once the output is accepted: a refused run leaves the state as it was
        save_state(ib, ib_or_scores)
    if state == "complete":
        return open_curated(out)
    for old in out.glob("part-*.arrow"):
        old.unlink()

    shards = []
    for j, lo in enumerate(range(0, plan.n_kept, rows_per_shard)):
        hi = min(lo + rows_per_shard, plan.n_kept)
        table = pa.table({
            "index": pa.array(plan.indices[lo:hi], pa.int64()),
            "weight": pa.array(plan.weights[lo:hi], pa.float32()),
            "epoch": pa.array(np.full(hi - lo, plan.epoch, dtype=np.int64), pa.int64()),
            "position": pa.array(np.arange(lo, hi, dtype=np.int64), pa.int64()),
        })
        path = out / shard_name(j)
        write_stream_shard(path, table)
        shards.append(ShardInfo.of(path, table.num_rows))

    summary = {**plan.report(), "saving_so_far": ib.summary()["saving"]}
    body = {
        "selector": "infobatch",
        "params": params,
        "seed": ib.seed,
        "epoch": plan.epoch,
        "inputs": {"scores": scores_fp},
        "pool": None,
        "n_selected": plan.n_kept,
        "n_pool": plan.n_samples,
        "selection_columns": PLAN_COLUMNS,
        "summary": summary,
    }
    write_manifest(out, "curated", fingerprint=fingerprint, body=body, shards=shards)
    return open_curated(out)


def read_plan(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64, weights float32) of a plan directory written by :func:`write_plan`, in training order."""
    curated = open_curated(path)
    indices = [t.column("index").to_numpy() for t in curated.tables()]
    weights = [t.column("weight").to_numpy() for t in curated.tables()]
    if not indices:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(indices).astype(np.int64, copy=False), np.concatenate(weights).astype(np.float32, copy=False)


def update_state(state_dir: str | Path, *loss_dirs: str | Path) -> dict[str, Any]:
    """Apply the loss shards of ``loss_dirs`` to the InfoBatch state in ``state_dir`` and save it; returns its summary."""
    ib = load_state(state_dir)
    for d in loss_dirs:
        apply_loss_shards(ib, d)
    save_state(ib, state_dir)
    return ib.summary()
