# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The backup and restore modules as Ansible runs them, against a real Redis container."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import secrets
import subprocess

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError
from ansible_collections.opsbook.stack.plugins.modules import backup as backup_module
from ansible_collections.opsbook.stack.plugins.modules import restore as restore_module
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module

IMAGE = "127.0.0.1:5000/redis:7.0"


def run(module, args: dict, capsys) -> dict:
    return run_module(module, args, capsys)


@pytest.fixture(scope="module")
def redis():
    if not os.path.exists("/var/run/docker.sock"):
        pytest.skip("no Docker Engine socket at /var/run/docker.sock")
    client = DockerClient()
    try:
        client.request_json("GET", "/images/%s/json" % IMAGE)
    except DockerError as exc:
        pytest.skip("sandbox image %s missing: %s" % (IMAGE, exc))
    name = "opsbook-bkp-test-modredis-%s" % secrets.token_hex(3)
    client.request_json(
        "POST", "/containers/create", query={"name": name}, body={"Image": IMAGE, "HostConfig": {"NetworkMode": "none"}}
    )
    try:
        client.request("POST", "/containers/%s/start" % name)
        for _i in range(100):
            if client.exec_run(name, ["redis-cli", "PING"]).stdout.strip() == b"PONG":
                break
        yield name
    finally:
        client.remove_container(name, force=True, volumes=True)


def cli(name, *args):
    return subprocess.run(
        ["docker", "exec", name, "redis-cli"] + list(args), capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def test_missing_container_argument_is_refused(capsys, tmp_path):
    result = run(backup_module, {"component": "r", "type": "redis", "dest": str(tmp_path)}, capsys)
    assert result["failed"] is True and "container" in result["msg"]


@pytest.mark.docker
def test_backup_check_real_and_restore_check_real(redis, tmp_path, capsys):
    common = {
        "component": "r",
        "type": "redis",
        "container": redis,
        "dest": str(tmp_path / "b"),
        "drill_prefix": "opsbook-bkp-test-drill-",
    }
    cli(redis, "SET", "k", "v1")
    planned = run(backup_module, dict(common, _ansible_check_mode=True), capsys)
    assert planned["changed"] is True and planned["plan"]["existing_backups"] == []
    assert not os.path.exists(tmp_path / "b" / "r")

    done = run(backup_module, dict(common, metrics_dir=str(tmp_path / "m"), drill=True), capsys)
    assert done.get("failed") is not True, done
    assert done["changed"] is True and done["backup"]["artifacts"][0]["name"] == "dump.rdb.zst"
    assert done["drill"]["dbsize"] == 1 and os.path.exists(done["backup"]["metrics_file"])

    cli(redis, "SET", "k", "v2")
    plan = run(restore_module, dict(common, _ansible_check_mode=True), capsys)
    assert plan["changed"] is True and plan["plan"]["verified"] is True and "check mode" in plan["msg"]
    assert cli(redis, "GET", "k") == "v2"  # check mode restored nothing

    verified = run(restore_module, dict(common, state="verified"), capsys)
    assert verified["changed"] is False and verified["backup_id"] == done["backup"]["id"]

    restored = run(restore_module, common, capsys)
    assert restored["changed"] is True and restored["restored"] == ["dump.rdb.zst"]
    assert cli(redis, "GET", "k") == "v1"

    # A flipped byte: refused before anything is touched, naming the file and both hashes.
    art = os.path.join(done["backup"]["path"], "dump.rdb.zst")
    data = bytearray(open(art, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(art, "wb").write(bytes(data))
    cli(redis, "SET", "k", "v3")
    refused = run(restore_module, common, capsys)
    assert refused["failed"] is True and refused["failure_class"] == "verify_failed"
    assert art in refused["msg"] and done["backup"]["artifacts"][0]["sha256"] in refused["msg"]
    assert cli(redis, "GET", "k") == "v3"
