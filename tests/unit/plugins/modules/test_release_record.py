# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""release_record as Ansible runs it: what it refuses, what it writes, and that an unchanged deploy is one record."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import hashlib
import json
import os

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import (
    TOKEN_ENV,
    hold_detached,
    release_detached,
)
from ansible_collections.opsbook.stack.plugins.modules import release_record
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module

REAL_SOCKET = "/var/run/docker.sock"
# A project no test environment runs: Docker lists no container for it.
EMPTY_PROJECT = "opsbook-unit-release-record"

needs_docker = pytest.mark.skipif(not os.path.exists(REAL_SOCKET), reason="no Docker Engine at %s" % REAL_SOCKET)


class FakeClient:
    """Two running replicas of `web`, as the Engine lists and inspects them."""

    def __init__(self, docker_host="", timeout=30.0):
        self.docker_host = docker_host

    def list_containers(self, labels=None, all=False):  # pylint: disable=redefined-builtin
        return [
            {
                "Id": "c%d" % n,
                "Names": ["/demo-web-%d" % n],
                "Image": "reg:5000/web:1",
                "ImageID": "sha256:web1",
                "Created": n,
                "Labels": {"com.docker.compose.service": "web", "com.docker.compose.container-number": str(n)},
            }
            for n in (1, 2)
        ]

    def inspect_image(self, image):
        assert image == "sha256:web1"
        return {"Id": image, "RepoDigests": ["reg:5000/web@sha256:d1"]}


@pytest.fixture
def compose_file(tmp_path):
    path = tmp_path / "compose.yaml"
    path.write_text("name: demo\nservices:\n  web:\n    image: reg:5000/web:1\n")
    return path


def args(tmp_path, compose_file, **extra):
    return {"project": "demo", "compose_file": str(compose_file), "journal_root": str(tmp_path / "j"), **extra}


def test_a_missing_compose_file_is_refused(tmp_path, capsys):
    result = run_module(release_record, args(tmp_path, tmp_path / "nope.yaml"), capsys)
    assert result["failed"] is True and "does not exist" in result["msg"]
    assert not (tmp_path / "j").exists()


def test_records_the_running_images_once_for_an_unchanged_deploy(tmp_path, compose_file, capsys, monkeypatch):
    monkeypatch.setattr(release_record, "DockerClient", FakeClient)
    first = run_module(release_record, args(tmp_path, compose_file, started=1.0), capsys)
    assert first["changed"] is True
    release = first["release"]
    assert release["services"] == {
        "web": {"image": "reg:5000/web:1", "image_id": "sha256:web1", "digest": "reg:5000/web@sha256:d1"}
    }
    assert release["compose_hash"] == hashlib.sha256(compose_file.read_bytes()).hexdigest()
    assert release["kind"] == "deploy" and release["status"] == "succeeded" and release["previous"] is None
    assert release["duration_s"] > 0
    with open(first["path"], encoding="utf-8") as handle:
        assert json.load(handle)["id"] == release["id"]

    again = run_module(release_record, args(tmp_path, compose_file), capsys)
    assert again["changed"] is False and again["release"]["id"] == release["id"]
    assert os.listdir(os.path.dirname(first["path"])) == [release["id"] + ".json"]


def test_a_changed_compose_file_is_a_new_release_that_names_the_previous(tmp_path, compose_file, capsys, monkeypatch):
    monkeypatch.setattr(release_record, "DockerClient", FakeClient)
    first = run_module(release_record, args(tmp_path, compose_file), capsys)["release"]
    compose_file.write_text(compose_file.read_text() + "# changed\n")
    second = run_module(release_record, args(tmp_path, compose_file, kind="upgrade"), capsys)
    assert second["changed"] is True and second["release"]["previous"] == first["id"]
    assert second["release"]["kind"] == "upgrade" and second["release"]["id"] != first["id"]


def test_check_mode_writes_nothing(tmp_path, compose_file, capsys, monkeypatch):
    monkeypatch.setattr(release_record, "DockerClient", FakeClient)
    result = run_module(release_record, args(tmp_path, compose_file, _ansible_check_mode=True), capsys)
    assert result["changed"] is True and not os.path.exists(result["path"])


@needs_docker
@pytest.mark.docker
def test_a_project_without_containers_is_not_recorded_as_succeeded(tmp_path, compose_file, capsys):
    result = run_module(release_record, args(tmp_path, compose_file, project=EMPTY_PROJECT), capsys)
    assert result["failed"] is True and "has no running containers" in result["msg"]


@needs_docker
@pytest.mark.docker
def test_a_failed_deploy_is_recorded_with_its_detail(tmp_path, compose_file, capsys):
    result = run_module(
        release_record,
        args(tmp_path, compose_file, project=EMPTY_PROJECT, status="failed", detail="health gate failed"),
        capsys,
    )
    assert result["changed"] is True
    assert result["release"]["status"] == "failed" and result["release"]["detail"] == "health gate failed"
    assert result["release"]["services"] == {} and os.path.isfile(result["path"])


def test_docker_host_falls_back_to_the_environment(tmp_path, compose_file, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix://%s/no-engine.sock" % tmp_path)
    result = run_module(release_record, args(tmp_path, compose_file), capsys)
    assert result["failed"] is True and "cannot read the containers of project demo" in result["msg"]
    assert "no-engine.sock" in result["msg"]


def test_waits_for_the_project_lock_and_names_its_holder_having_written_nothing(
    tmp_path, compose_file, capsys, monkeypatch
):
    monkeypatch.setattr(release_record, "DockerClient", FakeClient)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    root = str(tmp_path / "j")
    token, holder, _waited = hold_detached("demo", "rolling_upgrade", root, wait_s=1, hold_max_s=60)
    try:
        result = run_module(release_record, args(tmp_path, compose_file, lock_timeout=0.3), capsys)
        assert result["failed"] is True
        assert "locked by rolling_upgrade (pid %d" % holder["pid"] in result["msg"]
        assert result["holder"]["operation"] == "rolling_upgrade"
        assert not os.path.exists(os.path.join(root, "demo", "releases"))

        # Inside the lock its own play holds (opsbook.stack.project_lock's environment), it goes on.
        monkeypatch.setenv(TOKEN_ENV, token)
        inside = run_module(release_record, args(tmp_path, compose_file, lock_timeout=0), capsys)
        assert inside["changed"] is True and os.path.exists(inside["path"])
    finally:
        release_detached("demo", token, root)
