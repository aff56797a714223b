"""Runtime knobs, with defaults overridable by ``THRESHER_*`` environment variables.

These are settings of the machine or cluster a job runs on (how many rows a
block holds, where the scheduler is), not of the science: selectors take their
parameters explicitly and never read this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from thresher.exceptions import ParameterError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParameterError(f"The environment variable {name} must be an integer; got {raw!r}.") from None
    if value < 1:
        raise ParameterError(f"The environment variable {name} must be >= 1; got {value}.")
    return value


def _env_str(name: str, default: str | None) -> str | None:
    raw = os.environ.get(name)
    return raw if raw else default


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings read once from the environment.

    Attributes
    ----------
    block_rows : int
        Rows of a store read at once by streaming stages (``THRESHER_BLOCK_ROWS``, default 65,536).
    partition_rows : int
        Target rows per pool partition, i.e. per Dask task and per shard
        (``THRESHER_PARTITION_ROWS``, default 50,000).
    scheduler : str or None
        Address of an existing Dask scheduler (``THRESHER_SCHEDULER``); None starts a local cluster.
    memory_budget_bytes : int
        Memory an index may use (``THRESHER_MEMORY_BUDGET``, bytes, default 4 GiB).
    scheduler_timeout : int
        Seconds to wait for an existing scheduler to answer (``THRESHER_SCHEDULER_TIMEOUT``, default 10).
    slurm_startup_timeout : int
        Seconds SLURM worker jobs may stay queued before the first worker connects, and the longest
        time without any connected worker during the work (``THRESHER_SLURM_STARTUP_TIMEOUT``, default 600).
    slurm_poll_interval : int
        Seconds between two looks at the SLURM worker jobs' states (``squeue``) while fewer workers are
        connected than asked (``THRESHER_SLURM_POLL_INTERVAL``, default 10).
    """

    block_rows: int = field(default_factory=lambda: _env_int("THRESHER_BLOCK_ROWS", 65_536))
    partition_rows: int = field(default_factory=lambda: _env_int("THRESHER_PARTITION_ROWS", 50_000))
    scheduler: str | None = field(default_factory=lambda: _env_str("THRESHER_SCHEDULER", None))
    memory_budget_bytes: int = field(default_factory=lambda: _env_int("THRESHER_MEMORY_BUDGET", 4 << 30))
    scheduler_timeout: int = field(default_factory=lambda: _env_int("THRESHER_SCHEDULER_TIMEOUT", 10))
    slurm_startup_timeout: int = field(default_factory=lambda: _env_int("THRESHER_SLURM_STARTUP_TIMEOUT", 600))
    slurm_poll_interval: int = field(default_factory=lambda: _env_int("THRESHER_SLURM_POLL_INTERVAL", 10))


def runtime_config() -> RuntimeConfig:
    """The current settings (re-read each call, so tests can change the environment)."""
    return RuntimeConfig()
