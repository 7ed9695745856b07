# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""project_lock as Ansible runs it: a play holds the lock across tasks, a second play waits and names the first."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import time

from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import TOKEN_ENV, project_lock
from ansible_collections.opsbook.stack.plugins.modules import project_lock as project_lock_module
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module


def lock_args(tmp_path, **extra):
    return {"project": "demo", "journal_root": str(tmp_path), **extra}


def test_held_then_released_and_a_second_play_in_between_names_the_first(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    first = run_module(project_lock_module, lock_args(tmp_path, operation="compose_app deploy of demo"), capsys)
    assert first["changed"] is False and first["token"]
    assert first["environment"] == {TOKEN_ENV: first["token"]}
    try:
        started = time.monotonic()
        second = run_module(
            project_lock_module, lock_args(tmp_path, operation="service-down runbook", lock_timeout=0.5), capsys
        )
        assert time.monotonic() - started >= 0.5
        assert second["failed"] is True
        assert "locked by compose_app deploy of demo (pid %d" % first["holder"]["pid"] in second["msg"]
    finally:
        released = run_module(project_lock_module, lock_args(tmp_path, state="released", token=first["token"]), capsys)
    assert released["changed"] is False and released["released"] is True and "failed" not in released
    with project_lock("demo", "next writer", str(tmp_path), wait_s=1):
        pass
    again = run_module(project_lock_module, lock_args(tmp_path, state="released", token=first["token"]), capsys)
    assert again["released"] is False and "failed" not in again


def test_check_mode_takes_no_lock(tmp_path, capsys):
    result = run_module(project_lock_module, lock_args(tmp_path, _ansible_check_mode=True), capsys)
    assert result["changed"] is False and result["token"] == ""
    with project_lock("demo", "other writer", str(tmp_path), wait_s=0):
        pass
