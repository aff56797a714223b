"""InfoBatch on disk: the saved state of a training run, and the loss shards trainers feed back.

The algorithm (scores, pruning plans, weights, annealing) is pure and lives in
:mod:`thresher.selectors.infobatch` (Qin et al., ICLR 2024). What a training
run keeps between epochs, or exchanges with the planner on a cluster, is here:

- a state directory (:func:`save_state` / :func:`load_state`): ``scores.npy``
  and ``active_kept_well.npy`` written atomically, then ``infobatch.json`` last
  (settings, history and the scores' checksum), so a directory without it is an
  unfinished save and one whose scores do not match it is refused;
- loss shards (:func:`write_loss_shard` / :func:`apply_loss_shards`): each
  trainer writes its (int64 index, float32 loss) pairs as an Arrow IPC stream,
  and the planner applies every shard of a directory in name order.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from thresher.exceptions import ArtifactError, InputDataError
from thresher.fingerprint import hash_bytes
from thresher.selectors.infobatch import InfoBatch, as_numpy
from thresher.stores.atomic import atomic_path, atomic_write_json

STATE_FILE = "infobatch.json"
SCORES_FILE = "scores.npy"
ACTIVE_FILE = "active_kept_well.npy"


def save_state(infobatch: InfoBatch, directory: str | Path) -> Path:
    """Write ``infobatch``'s state to ``directory`` (atomically per file; ``infobatch.json`` last marks it complete).

    ``directory`` is new, empty, or a saved state (updated in place); any other directory is refused.
    """
    from thresher.stores.output_guard import check_output

    check_output(directory, "infobatch", name="directory")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = infobatch.state_dict()
    for name, array in ((SCORES_FILE, state["scores"]), (ACTIVE_FILE, state["active_kept_well"])):
        with atomic_path(directory / name) as tmp:
            buffer = io.BytesIO()  # np.save to a real file uses fwrite, whose failures (disk full) lose errno
            np.save(buffer, array, allow_pickle=False)
            tmp.write_bytes(buffer.getbuffer())
    meta = {k: v for k, v in state.items() if k not in ("scores", "active_kept_well")}
    meta["scores_checksum"] = hash_bytes(state["scores"].tobytes())
    meta["history"] = {str(k): v for k, v in meta["history"].items()}
    atomic_write_json(directory / STATE_FILE, meta)
    return directory


def load_state(directory: str | Path, cls: type[InfoBatch] = InfoBatch) -> InfoBatch:
    """Read a state written by :func:`save_state` (as an instance of ``cls``, a subclass of InfoBatch if given)."""
    directory = Path(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} holds no saved InfoBatch state ({STATE_FILE} is missing).")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        scores = np.load(directory / SCORES_FILE, allow_pickle=False)
        kept = np.load(directory / ACTIVE_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"InfoBatch state in {directory} is unreadable: {exc}") from exc
    if hash_bytes(np.ascontiguousarray(scores).tobytes()) != meta.get("scores_checksum"):
        raise ArtifactError(f"{directory / SCORES_FILE} does not match {path} (an interrupted save or a changed file).")
    infobatch = cls(**meta["params"])
    meta.pop("scores_checksum")
    infobatch.load_state_dict({**meta, "scores": scores, "active_kept_well": kept})
    return infobatch


def apply_loss_shards(infobatch: InfoBatch, directory: str | Path) -> int:
    """Feed the loss shards in ``directory`` (``*.arrow`` streams with ``index`` int64 and ``loss``) to ``infobatch.update``, in name order.

    Returns the number of losses applied. See :func:`write_loss_shard`.
    """
    from thresher.stores.arrow_io import read_stream_shard

    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"Loss-shard directory {directory} does not exist.")
    files = sorted(p for p in directory.glob("*.arrow") if not p.name.startswith("."))
    if not files:
        raise ArtifactError(f"Loss-shard directory {directory} holds no *.arrow shards.")
    n = 0
    for path in files:
        table = read_stream_shard(path)
        for column in ("index", "loss"):
            if column not in table.column_names:
                raise InputDataError(f"Loss shard {path} has no {column!r} column (it has {table.column_names}).")
        try:
            infobatch.update(table.column("index").to_numpy(), table.column("loss").to_numpy())
        except InputDataError as exc:
            raise InputDataError(f"Loss shard {path}: {exc}") from None
        n += table.num_rows
    return n


def write_loss_shard(path: str | Path, indices: Any, losses: Any) -> Path:
    """Write one trainer's (index int64, loss float32) pairs as an Arrow IPC stream shard for :func:`apply_loss_shards`."""
    import pyarrow as pa

    from thresher.stores.arrow_io import write_stream_shard

    idx = as_numpy(indices, "indices", float_=False)
    values = as_numpy(losses, "losses", float_=True)
    if idx.ndim != 1 or values.ndim != 1 or len(idx) != len(values):
        raise InputDataError(f"write_loss_shard needs 1-D 'indices' and 'losses' of one length; got shapes {idx.shape} and {values.shape}.")
    if len(idx) and not np.issubdtype(idx.dtype, np.integer):
        raise InputDataError(f"The 'indices' given to write_loss_shard must be integers (int64); got dtype {idx.dtype}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"index": pa.array(idx.astype(np.int64), pa.int64()), "loss": pa.array(values.astype(np.float32), pa.float32())})
    write_stream_shard(path, table)
    return path
