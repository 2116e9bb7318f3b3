"""One writer per run folder: the lock names its holder, a live holder refuses a second process, a dead one's
lock is taken over, and only global rank 0 takes it."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from soft_tokens.runs.lock import LOCK, RunFolderBusy, acquire, launched_as_global_zero, release, run_lock


def lock_of(pid: int, host: str | None = None) -> str:
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-02 03:04:05"})


@pytest.fixture()
def live_pid():
    """The pid of another process that keeps running during the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid runs nothing any more
    return proc.pid


def test_lock_names_its_holder_and_is_released(tmp_path):
    with run_lock(tmp_path):
        holder = json.loads((tmp_path / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["started"]
    assert not (tmp_path / LOCK).exists()


def test_folder_held_by_a_live_process_is_refused_naming_it(tmp_path, live_pid):
    (tmp_path / LOCK).write_text(lock_of(live_pid))
    with pytest.raises(RunFolderBusy) as refused:
        acquire(tmp_path)
    message = str(refused.value)
    assert f"in use by another training process (pid {live_pid} on {socket.gethostname()}" in message
    assert str(tmp_path / LOCK) in message
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == live_pid  # the holder's lock is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]


def test_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / LOCK).write_text(lock_of(dead_pid(), host="some-other-node"))
    with pytest.raises(RunFolderBusy, match="on some-other-node"):
        acquire(tmp_path)


def test_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / LOCK).write_text(lock_of(pid))
    with caplog.at_level(logging.WARNING, logger="soft_tokens.runs.lock"):
        record = acquire(tmp_path)
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of pid {pid}" in caplog.text
    release(tmp_path, record)
    assert not (tmp_path / LOCK).exists()


def test_lock_another_process_took_over_is_not_released(tmp_path, live_pid):
    record = acquire(tmp_path)
    (tmp_path / LOCK).write_text(lock_of(live_pid))  # taken over meanwhile
    release(tmp_path, record)
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == live_pid


@pytest.mark.parametrize(
    "env, zero",
    [
        ({}, True),
        ({"RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"LOCAL_RANK": "1"}, False),
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
        ({"SLURM_PROCID": "2"}, False),
    ],
)
def test_only_global_rank_zero_takes_the_lock(monkeypatch, env, zero):
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launched_as_global_zero() is zero
