# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""rollback as Ansible runs it: which releases it refuses to return to, before it takes any lock or changes
anything. Rollbacks themselves run against the real engine in molecule/upgrade."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._journal import Journal, Release, ServiceImage
from ansible_collections.opsbook.stack.plugins.modules import rollback
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module

REAL_SOCKET = "/var/run/docker.sock"
EMPTY_PROJECT = "opsbook-unit-rollback"
GONE = "sha256:" + "0" * 64

needs_docker = pytest.mark.skipif(not os.path.exists(REAL_SOCKET), reason="no Docker Engine at %s" % REAL_SOCKET)


def release(n, image_id, status="succeeded"):
    return Release(
        id="r%02d" % n,
        project=EMPTY_PROJECT,
        kind="upgrade",
        status=status,
        created="",
        created_ts=1000.0 + n,
        services={"web": ServiceImage("reg/web:%d" % n, image_id, "reg/web@sha256:d%d" % n)},
    )


@pytest.fixture
def project(tmp_path):
    (tmp_path / "compose.yaml").write_text("name: %s\nservices: {}\n" % EMPTY_PROJECT)
    journal = Journal(str(tmp_path / "j"), EMPTY_PROJECT)
    return tmp_path, journal


def args(tmp_path, **extra):
    return {"project": EMPTY_PROJECT, "project_dir": str(tmp_path), "journal_root": str(tmp_path / "j"), **extra}


def lock_taken(journal):
    return os.path.exists(os.path.join(journal.root, journal.project, ".lock"))


def test_a_release_that_did_not_succeed_is_refused(project, capsys):
    tmp_path, journal = project
    journal.record(release(1, GONE, "failed"))
    result = run_module(rollback, args(tmp_path, release="r01"), capsys)
    assert result["failed"] is True and result["changed"] is False
    assert "release r01 has status failed" in result["msg"]
    assert not lock_taken(journal)


def test_canary_weight_out_of_range(project, capsys):
    tmp_path, _journal = project
    result = run_module(rollback, args(tmp_path, canary_weight=-1), capsys)
    assert result["failed"] is True and "canary_weight must be from 0" in result["msg"]


@needs_docker
@pytest.mark.docker
def test_a_release_whose_image_is_gone_is_not_intact(project, capsys):
    tmp_path, journal = project
    journal.record(release(1, GONE))
    result = run_module(rollback, args(tmp_path, release="r01"), capsys)
    assert result["failed"] is True and result["changed"] is False
    assert "release r01 is not intact on this host" in result["msg"]
    assert not lock_taken(journal)


@needs_docker
@pytest.mark.docker
def test_without_an_intact_previous_release_nothing_is_chosen(project, capsys):
    tmp_path, journal = project
    journal.record(release(1, GONE))
    journal.record(release(2, GONE, "failed"))
    result = run_module(rollback, args(tmp_path), capsys)
    assert result["failed"] is True and result["changed"] is False
    assert "no previous succeeded release of %s is intact on this host" % EMPTY_PROJECT in result["msg"]
    assert not lock_taken(journal)
