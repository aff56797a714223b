"""One writer per artefact directory: refusals name the holder; dead holders' locks are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from thresher.exceptions import ArtifactError
from thresher.stores.lock import LOCK_NAME, output_lock
from thresher.stores.manifest import prepare_output_dir


def write_lock(directory, **holder):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_NAME).write_text(json.dumps({"started": "earlier", "token": "t", **holder}))


def test_lock_is_released_and_nested_use_is_refused(tmp_path):
    with output_lock(tmp_path / "out") as path:
        assert path.exists()
        with pytest.raises(ArtifactError, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            with output_lock(tmp_path / "out"):
                pass
    assert not path.exists()


def test_live_holder_on_this_host_refuses(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lock(tmp_path / "out", host=socket.gethostname(), pid=sleeper.pid)
        with pytest.raises(ArtifactError, match=f"pid {sleeper.pid}.*delete .*{LOCK_NAME}"):
            with output_lock(tmp_path / "out"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with output_lock(tmp_path / "out"):  # its holder is now dead: a stale lock is taken over
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_other_host_lock_is_stale_only_when_old(tmp_path, monkeypatch):
    write_lock(tmp_path / "out", host="elsewhere", pid=1)
    with pytest.raises(ArtifactError, match="on elsewhere"):
        with output_lock(tmp_path / "out"):
            pass
    old = time.time() - 3600
    os.utime(tmp_path / "out" / LOCK_NAME, (old, old))
    monkeypatch.setenv("THRESHER_LOCK_TTL", "600")
    with output_lock(tmp_path / "out"):
        pass


def test_lock_file_does_not_count_as_foreign_content(tmp_path):
    with output_lock(tmp_path / "out"):
        assert prepare_output_dir(tmp_path / "out", "embeddings", "fp") == "new"
        assert prepare_output_dir(tmp_path / "out", "embeddings", "fp2", overwrite=True) == "new"
        assert (tmp_path / "out" / LOCK_NAME).exists()
