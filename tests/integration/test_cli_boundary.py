"""The CLI boundary: every exception becomes one line and an exit code; Ctrl-C releases the lock and the rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from thresher.cli import _Group
from thresher.exceptions import EnvironmentProblemError, ParameterError
from thresher.stores import open_embedding_store
from thresher.stores.lock import LOCK_NAME


def _group_raising(exc: BaseException) -> click.Group:
    """A group with the CLI's boundary whose one command raises ``exc`` (the real commands raise these from deep inside)."""

    @click.group(cls=_Group)
    def cli() -> None:
        pass

    @cli.command()
    def go() -> None:
        raise exc

    return cli


@pytest.mark.parametrize(("exc", "code", "pattern"), [
    (ParameterError("The 'budget' parameter must be >= 1; got 0."), 2, r"^error: The 'budget' parameter must be >= 1; got 0\.\n$"),
    (EnvironmentProblemError("cannot reach the Dask scheduler at tcp://h:1: refused"), 1, r"^error: cannot reach the Dask scheduler"),
    (OSError(28, "No space left on device", "/data/out/part-00000.arrow"), 1, r"^error: No space left on device: /data/out/part-00000\.arrow\n$"),
    (MemoryError(), 1, r"^error: out of memory \(MemoryError\)"),
    (RuntimeError("boom\nsecond line"), 1,
     r"^error: internal error \(RuntimeError\): boom second line — rerun with THRESHER_DEBUG=1 for the traceback, and report it\n$"),
    (KeyError("k"), 1, r"^error: internal error \(KeyError\): 'k'"),
    (KeyboardInterrupt(), 130, r"^interrupted; rerun the same command to resume\n$"),
])
def test_every_exception_is_one_line(exc, code, pattern, monkeypatch):
    monkeypatch.delenv("THRESHER_DEBUG", raising=False)
    result = CliRunner().invoke(_group_raising(exc), ["go"])
    assert result.exit_code == code
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    import re

    assert re.search(pattern, result.stderr), result.stderr


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ParameterError("bad"), KeyboardInterrupt()])
def test_debug_reraises_with_the_traceback(exc, monkeypatch):
    monkeypatch.setenv("THRESHER_DEBUG", "1")
    result = CliRunner().invoke(_group_raising(exc), ["go"])
    if isinstance(exc, KeyboardInterrupt):
        assert result.exit_code == 1 and "interrupted; rerun" not in result.stderr  # click's own "Aborted!" after the re-raise
    else:
        assert result.exception is exc


def test_debug_traceback_in_a_real_process(tmp_path):
    env = {**os.environ, "THRESHER_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "thresher", "embed", "--pool", "bogus://b/p.jsonl", "--out", str(tmp_path / "out"), "--local"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "InputDataError" in proc.stderr


def test_thresher_scheduler_env_is_checked(tmp_path, minilm_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"text": "a"}\n{"text": "b"}\n')
    env = {**os.environ, "THRESHER_SCHEDULER": "tcp://127.0.0.1:1", "THRESHER_SCHEDULER_TIMEOUT": "2"}
    proc = subprocess.run([sys.executable, "-m", "thresher", "embed", "--pool", str(pool), "--out", str(tmp_path / "out"), "--model", minilm_path,
                           "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:1 (from THRESHER_SCHEDULER): "), proc.stderr
    assert "waited 2 s" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def _embed(pool: Path, out: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "thresher", "embed", "--pool", str(pool), "--out", str(out), "--model", model, "--local", "--quiet",
            "--partition-rows", "20", "--batch-size", "8"]


def test_ctrl_c_releases_the_lock_and_the_rerun_resumes(tmp_path, minilm_path):
    pool = tmp_path / "pool.jsonl"
    words = ["cats", "dogs", "rivers", "mountains", "trains", "music", "bread", "stars"]
    pool.write_text("".join(json.dumps({"text": f"row {i}: a sentence about {words[i % 8]} and {words[(i * 3) % 8]} number {i}"}) + "\n"
                            for i in range(400)))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(_embed(pool, out, minilm_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*.arrow")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be interrupted: make the pool larger"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted; rerun the same command to resume", stderr
    assert "Traceback" not in stderr
    assert not (out / LOCK_NAME).exists(), "the output lock was not released"
    assert not (out / "manifest.json").exists()
    done_before = sorted(p.name for p in out.glob("part-*.arrow"))
    assert 0 < len(done_before) < 20

    rerun = subprocess.run(_embed(pool, out, minilm_path), capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    fresh = tmp_path / "fresh"
    whole = subprocess.run(_embed(pool, fresh, minilm_path), capture_output=True, text=True, env=env, timeout=600)
    assert whole.returncode == 0, whole.stderr
    resumed, uninterrupted = open_embedding_store(out), open_embedding_store(fresh)
    assert resumed.n_shards == uninterrupted.n_shards == 20
    assert list(resumed.ids()) == list(uninterrupted.ids())
    np.testing.assert_array_equal(resumed.to_numpy(), uninterrupted.to_numpy())
