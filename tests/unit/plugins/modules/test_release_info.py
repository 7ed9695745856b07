# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""release_info as Ansible runs it: the journal in order, broken files named, and `intact` asked of Docker."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient
from ansible_collections.opsbook.stack.plugins.module_utils._journal import Journal, Release, ServiceImage
from ansible_collections.opsbook.stack.plugins.modules import release_info
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module

REAL_SOCKET = "/var/run/docker.sock"
EMPTY_PROJECT = "opsbook-unit-release-info"
GONE = "sha256:" + "0" * 64

needs_docker = pytest.mark.skipif(not os.path.exists(REAL_SOCKET), reason="no Docker Engine at %s" % REAL_SOCKET)


def release(n, image_id, status="succeeded", project="demo"):
    return Release(
        id="r%02d" % n,
        project=project,
        kind="deploy",
        status=status,
        created="",
        created_ts=1000.0 + n,
        services={"web": ServiceImage("reg/web:%d" % n, image_id, "reg/web@sha256:d%d" % n)},
    )


def journal_with(tmp_path, *records, project="demo"):
    journal = Journal(str(tmp_path / "j"), project)
    for record in records:
        journal.record(record)
    return journal


def test_an_empty_journal(tmp_path, capsys):
    result = run_module(release_info, {"project": "demo", "journal_root": str(tmp_path / "j")}, capsys)
    assert result["changed"] is False
    assert result["releases"] == [] and result["latest"] is None and result["current"] is None
    assert result["broken"] == []


def test_records_oldest_first_latest_succeeded_and_broken_files(tmp_path, capsys):
    journal = journal_with(tmp_path, release(1, "a"), release(2, "b"), release(3, "c", "failed"))
    with open(os.path.join(journal.path, "r04.json"), "w", encoding="utf-8") as handle:
        handle.write("{half")
    result = run_module(
        release_info, {"project": "demo", "journal_root": str(tmp_path / "j"), "check_images": False}, capsys
    )
    assert [r["id"] for r in result["releases"]] == ["r01", "r02", "r03"]
    assert result["latest"]["id"] == "r02"
    assert result["broken"] == [os.path.join(journal.path, "r04.json")]
    assert all("intact" not in r for r in result["releases"])


def test_a_record_of_the_wrong_shape_is_a_warning_not_a_crash(tmp_path, capsys, monkeypatch):
    journal = journal_with(tmp_path, release(1, "a"))
    for name, content in (("r02.json", "null"), ("r03.json", "[]"), ("r04.json", '{"id": "r04", "created_ts": null}')):
        with open(os.path.join(journal.path, name), "w", encoding="utf-8") as handle:
            handle.write(content)
    # Where a warning goes depends on what the test process imported before (the controller's display or the
    # result); the module's own call is what this test is about.
    warned = []
    monkeypatch.setattr(release_info.AnsibleModule, "warn", lambda self, message: warned.append(message))
    result = run_module(
        release_info, {"project": "demo", "journal_root": str(tmp_path / "j"), "check_images": False}, capsys
    )
    assert [r["id"] for r in result["releases"]] == ["r01"] and result["latest"]["id"] == "r01"
    assert len(result["broken"]) == 3
    assert len(warned) == 3 and all("skipped the release record %s" % journal.path in w for w in warned)


def test_an_unreachable_engine_gives_intact_null(tmp_path, capsys, monkeypatch):
    journal_with(tmp_path, release(1, "a"))
    # docker_host is not given: the module takes DOCKER_HOST, which names no engine.
    monkeypatch.setenv("DOCKER_HOST", "unix://%s/no-engine.sock" % tmp_path)
    result = run_module(release_info, {"project": "demo", "journal_root": str(tmp_path / "j")}, capsys)
    assert result["releases"][0]["intact"] is None and result["current"] is None


@needs_docker
@pytest.mark.docker
def test_intact_says_whether_every_image_is_still_on_the_host(tmp_path, capsys):
    client = DockerClient("unix://" + REAL_SOCKET)
    images = client.request_json("GET", "/images/json") or []
    if not images:
        pytest.skip("the engine has no image")
    present = images[0]["Id"]
    journal_with(
        tmp_path,
        release(1, present, project=EMPTY_PROJECT),
        release(2, GONE, project=EMPTY_PROJECT),
        project=EMPTY_PROJECT,
    )
    result = run_module(release_info, {"project": EMPTY_PROJECT, "journal_root": str(tmp_path / "j")}, capsys)
    assert [r["intact"] for r in result["releases"]] == [True, False]
    assert result["current"] is None  # the project runs no container
