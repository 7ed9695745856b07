# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The project lock (docs/contracts.md, "One lock per project"): two writers at once take turns, a writer that
waits in vain names the holder, and a play holds the lock across its tasks without blocking itself."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import multiprocessing
import os
import time

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _project_lock
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import (
    TOKEN_ENV,
    ProjectLocked,
    hold_detached,
    project_lock,
    read_holder,
    release_detached,
)


def _writer(root: str, name: str, log: str, wait_s: float, hold_s: float) -> None:
    """One writer in its own process: take the lock, note when it held it, keep it hold_s seconds."""
    try:
        with project_lock("demo", name, root, wait_s=wait_s):
            start = time.monotonic()
            time.sleep(hold_s)
            end = time.monotonic()
        line = {"name": name, "start": start, "end": end}
    except ProjectLocked as exc:
        line = {"name": name, "error": str(exc)}
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def _run_writers(tmp_path, wait_s: float, hold_s: float) -> list[dict]:
    log = str(tmp_path / "log.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), n, log, wait_s, hold_s)) for n in ("upgrade", "deploy")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    with open(log, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_two_writers_at_once_take_turns(tmp_path):
    lines = _run_writers(tmp_path, wait_s=10, hold_s=0.4)
    assert all("error" not in line for line in lines), lines
    first, second = sorted(lines, key=lambda line: line["start"])
    assert second["start"] >= first["end"], "the writers overlapped: %s" % lines


def test_the_writer_that_waits_in_vain_names_the_holder_and_its_wait(tmp_path):
    lines = _run_writers(tmp_path, wait_s=0.3, hold_s=2.0)
    errors = [line for line in lines if "error" in line]
    winners = [line for line in lines if "error" not in line]
    assert len(errors) == 1 and len(winners) == 1, lines
    message = errors[0]["error"]
    assert "locked by %s (pid " % winners[0]["name"] in message
    assert "waited 0.3 s (lock_timeout) and changed nothing" in message


@pytest.fixture
def held(tmp_path):
    token, holder, _waited = hold_detached("demo", "compose_app deploy", str(tmp_path), wait_s=1, hold_max_s=60)
    yield token, holder
    release_detached("demo", token, str(tmp_path))


def test_a_lock_held_across_tasks_blocks_other_writers_and_names_its_play(tmp_path, held, monkeypatch):
    token, holder = held
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert holder["pid"] != os.getpid() and holder["operation"] == "compose_app deploy"
    started = time.monotonic()
    with pytest.raises(ProjectLocked) as caught:
        with project_lock("demo", "rolling_upgrade", str(tmp_path), wait_s=0.5):
            pytest.fail("a second writer got the lock the play holds")
    assert time.monotonic() - started >= 0.5
    assert "locked by compose_app deploy (pid %d" % holder["pid"] in str(caught.value)
    assert "kill %d" % holder["pid"] in str(caught.value)
    assert read_holder(_project_lock.lock_path("demo", str(tmp_path)))["token"] == token


def test_the_tasks_of_the_play_that_holds_the_lock_go_on(tmp_path, held, monkeypatch):
    token, _holder = held
    monkeypatch.setenv(TOKEN_ENV, token)
    with project_lock("demo", "release_record", str(tmp_path), wait_s=0.0) as inside:
        assert inside.waited_s == 0.0
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    with pytest.raises(ProjectLocked):
        with project_lock("demo", "release_record", str(tmp_path), wait_s=0.2):
            pytest.fail("a wrong token passed the lock")


def test_a_writer_waiting_for_the_play_gets_the_lock_when_the_play_lets_go(tmp_path, held):
    token, _holder = held
    log = str(tmp_path / "log.jsonl")
    proc = multiprocessing.get_context("fork").Process(target=_writer, args=(str(tmp_path), "restore", log, 10, 0))
    proc.start()
    time.sleep(0.5)
    released_at = time.monotonic()
    assert release_detached("demo", token, str(tmp_path)) is True
    proc.join(15)
    with open(log, encoding="utf-8") as handle:
        line = json.loads(handle.read())
    assert "error" not in line and line["start"] >= released_at
    assert release_detached("demo", token, str(tmp_path)) is False  # released once; a second release is a no-op


def test_the_lease_frees_the_lock_of_a_play_that_never_released_it(tmp_path):
    hold_detached("demo", "killed play", str(tmp_path), wait_s=0, hold_max_s=0.5)
    with project_lock("demo", "next run", str(tmp_path), wait_s=5) as held:
        assert held.waited_s > 0.2


def test_hold_detached_waits_its_timeout_then_names_the_holder(tmp_path):
    with project_lock("demo", "rollback", str(tmp_path)):
        started = time.monotonic()
        with pytest.raises(ProjectLocked) as caught:
            hold_detached("demo", "compose_app deploy", str(tmp_path), wait_s=0.4, hold_max_s=10)
        assert time.monotonic() - started >= 0.4
    assert "locked by rollback (pid %d" % os.getpid() in str(caught.value)
