# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The restore module as Ansible runs it: its argument rules, the job file, locks, DOCKER_HOST, a real Redis."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._files import flock
from ansible_collections.opsbook.stack.plugins.modules import backup as backup_module
from ansible_collections.opsbook.stack.plugins.modules import restore as restore_module
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module
from ansible_collections.opsbook.stack.tests.unit.plugins.modules.test_backup_module import (  # noqa: F401  # pylint: disable=unused-import
    cli,
    redis,
)

DRILL_PREFIX = "opsbook-bkp-test-drill-"


def test_type_or_config_is_required(capsys, tmp_path):
    result = run_module(restore_module, {"component": "r", "dest": str(tmp_path)}, capsys)
    assert result["failed"] is True and "config" in result["msg"] and "type" in result["msg"]


def test_config_and_type_are_exclusive(capsys, tmp_path):
    args = {"component": "r", "config": str(tmp_path / "r.json"), "type": "redis", "container": "c"}
    result = run_module(restore_module, args, capsys)
    assert result["failed"] is True and "mutually exclusive" in result["msg"]


def test_choices_come_from_the_library(capsys, tmp_path):
    result = run_module(restore_module, {"component": "r", "type": "oracle", "container": "c"}, capsys)
    assert result["failed"] is True and "mariadb, mysql, postgres, redis, prometheus, volume" in result["msg"]


def test_no_backup_is_a_verify_failure(capsys, tmp_path):
    args = {"component": "r", "type": "redis", "container": "c", "dest": str(tmp_path), "state": "verified"}
    result = run_module(restore_module, args, capsys)
    assert result["failed"] is True and result["failure_class"] == "verify_failed" and result["exit_code"] == 9
    assert "no committed backup" in result["msg"]


def test_a_component_the_job_file_lacks_is_a_usage_error(capsys, tmp_path):
    config = tmp_path / "jobs.json"
    config.write_text(json.dumps({"dest": str(tmp_path), "components": {"cache": {"type": "redis", "container": "c"}}}))
    result = run_module(restore_module, {"component": "other", "config": str(config)}, capsys)
    assert result["failed"] is True and result["exit_code"] == 2 and "have: cache" in result["msg"]


@pytest.fixture()
def backed_up(redis, tmp_path, capsys):  # noqa: F811  # pylint: disable=redefined-outer-name
    """A job file for the Redis container and one backup taken through it by the backup module."""
    config = tmp_path / "cache.json"
    job = {"dest": str(tmp_path / "b"), "drill_prefix": DRILL_PREFIX, "components": {"cache": {}}}
    job["components"]["cache"] = {"type": "redis", "container": redis}
    config.write_text(json.dumps(job))
    cli(redis, "SET", "restore-test", "v1")
    done = run_module(backup_module, {"component": "cache", "config": str(config)}, capsys)
    assert done.get("failed") is not True, done
    return {"config": str(config), "backup": done["backup"], "container": redis, "dest": job["dest"]}


@pytest.mark.docker
def test_restore_and_drill_from_the_job_file(backed_up, capsys):  # pylint: disable=redefined-outer-name
    args = {"component": "cache", "config": backed_up["config"]}
    verified = run_module(restore_module, dict(args, state="verified"), capsys)
    assert verified["changed"] is False and verified["backup_id"] == backed_up["backup"]["id"]
    assert (
        verified["plan"]["steps"][0].startswith("verify sha256")
        and "rename it over the live file" in verified["plan"]["steps"][1]
    )

    drilled = run_module(restore_module, dict(args, state="drilled"), capsys)
    assert drilled.get("failed") is not True, drilled
    assert drilled["changed"] is False and drilled["drill"]["matches_source"] is True

    cli(backed_up["container"], "SET", "restore-test", "v2")
    restored = run_module(restore_module, dict(args, backup_id=backed_up["backup"]["id"]), capsys)
    assert restored["changed"] is True and restored["restored"] == ["dump.rdb.zst"]
    assert cli(backed_up["container"], "GET", "restore-test") == "v1"


@pytest.mark.docker
def test_a_held_project_lock_refuses_the_restore(backed_up, tmp_path, capsys):  # pylint: disable=redefined-outer-name
    lock = str(tmp_path / "project.lock")
    cli(backed_up["container"], "SET", "restore-test", "v3")
    with flock(lock, "rolling_upgrade"):
        result = run_module(
            restore_module, {"component": "cache", "config": backed_up["config"], "project_lock": lock}, capsys
        )
    assert result["failed"] is True and result["failure_class"] == "locked" and result["exit_code"] == 3
    assert "rolling_upgrade" in result["msg"] and str(os.getpid()) in result["msg"]
    assert cli(backed_up["container"], "GET", "restore-test") == "v3"  # nothing was touched


@pytest.mark.docker
def test_docker_host_falls_back_to_the_environment(backed_up, monkeypatch, capsys):  # pylint: disable=redefined-outer-name
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/opsbook-test.sock")
    args = {"component": "cache", "type": "redis", "container": backed_up["container"], "dest": backed_up["dest"]}
    result = run_module(restore_module, args, capsys)
    assert result["failed"] is True and result["exit_code"] == 4
    assert "/nonexistent/opsbook-test.sock" in result["msg"]
