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


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    write_lock(tmp_path / "out", host=socket.gethostname(), pid=dead_pid())
    os.utime(tmp_path / "out" / LOCK_NAME)  # freshly refreshed: on this host only the pid matters
    with output_lock(tmp_path / "out"):
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_reused_pid_is_recognised_by_its_start_time(tmp_path):
    import psutil

    me = psutil.Process()
    # a holder that had this process's pid but started an hour earlier: a different, dead process
    write_lock(tmp_path / "out", host=socket.gethostname(), pid=me.pid, pid_started=me.create_time() - 3600)
    with output_lock(tmp_path / "out"):
        pass
    write_lock(tmp_path / "out", host=socket.gethostname(), pid=me.pid, pid_started=me.create_time())
    with pytest.raises(ArtifactError, match=f"pid {me.pid}"):
        with output_lock(tmp_path / "out"):
            pass


def test_other_host_or_pid_namespace_is_judged_by_the_heartbeat_not_the_pid(tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_LOCK_TTL", "600")
    pid = dead_pid()  # dead here, but a pid means nothing on another machine
    for holder in ({"host": "elsewhere"}, {"host": socket.gethostname(), "pid_namespace": "pid:[1]"}):
        write_lock(tmp_path / "out", pid=pid, **holder)
        with pytest.raises(ArtifactError, match=f"pid {pid}"):
            with output_lock(tmp_path / "out"):
                pass
        old = time.time() - 601
        os.utime(tmp_path / "out" / LOCK_NAME, (old, old))
        with output_lock(tmp_path / "out"):
            pass


def test_unreadable_lock_is_stale_only_when_old(tmp_path, monkeypatch):
    monkeypatch.setenv("THRESHER_LOCK_TTL", "600")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text("")  # a holder that died between creating and writing it
    with pytest.raises(ArtifactError, match="another thresher job"):
        with output_lock(tmp_path / "out"):
            pass
    old = time.time() - 601
    os.utime(tmp_path / "out" / LOCK_NAME, (old, old))
    with output_lock(tmp_path / "out"):
        pass


HOLD = """
import sys, time
from thresher.stores.lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_held_lock_refuses_at_once_and_its_heartbeat_keeps_it_fresh(tmp_path):
    ttl = 1.2  # the holder refreshes every ttl / 4 = 0.3 s
    env = {**os.environ, "THRESHER_LOCK_TTL": str(ttl)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out"), "30"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = tmp_path / "out" / LOCK_NAME
        first = lock.stat().st_mtime
        time.sleep(2 * ttl)
        assert lock.stat().st_mtime > first and time.time() - lock.stat().st_mtime < ttl
        started = time.monotonic()
        with pytest.raises(ArtifactError, match=f"pid {holder.pid}"):
            with output_lock(tmp_path / "out"):
                pass
        assert time.monotonic() - started < 1.0  # refused, not queued
    finally:
        holder.kill()
        holder.wait()
