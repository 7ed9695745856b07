# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Real MariaDB, PostgreSQL and Redis servers from the sandbox registry, started once for the unit session
(tests/unit/plugins/conftest.py makes ``dbs`` a fixture), and the shells into them the tests use."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils import _backup as bk
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient, DockerError

SOCKET = "/var/run/docker.sock"
IMAGES = {
    "mariadb": "127.0.0.1:5000/mariadb:10.11",
    "postgres": "127.0.0.1:5000/postgres:15",
    "redis": "127.0.0.1:5000/redis:7.0",
}
PREFIX = "opsbook-bkp-test-"


def _docker_ready() -> str:
    if not os.path.exists(SOCKET):
        return "no Docker Engine socket at %s" % SOCKET
    client = DockerClient()
    try:
        for image in IMAGES.values():
            client.request_json("GET", "/images/%s/json" % image)
    except DockerError as exc:
        return "sandbox image missing or engine unusable: %s" % exc
    return ""


def _create(client: DockerClient, name: str, **body) -> None:
    """Create (not start) a container named name; body is the Engine API's create body (Image, Env, ...)."""
    client.request_json("POST", "/containers/create", query={"name": name}, body=body)


@pytest.fixture(scope="session")
def dbs():
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    client = DockerClient()
    run = secrets.token_hex(3)
    names = {kind: "%s%s-%s" % (PREFIX, kind, run) for kind in IMAGES}
    env = {
        "mariadb": ["MARIADB_ROOT_PASSWORD=root-%s" % run, "MARIADB_DATABASE=app"],
        "postgres": ["POSTGRES_PASSWORD=pg-%s" % run],
        "redis": [],
    }
    try:
        for kind, image in IMAGES.items():
            _create(client, names[kind], Image=image, Env=env[kind], HostConfig={"NetworkMode": "none"})
            client.request("POST", "/containers/%s/start" % names[kind])
        settings = bk.Settings(dest="/nonexistent")
        specs = {kind: bk.ComponentSpec(name=kind, type=kind, container=names[kind]) for kind in IMAGES}
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda k: bk.engine_for(specs[k], settings, client).wait_ready(names[k], 90, 1), IMAGES))
        yield names
    finally:
        for name in names.values():
            try:
                client.remove_container(name, force=True, volumes=True)
            except DockerError:
                pass


def _sh(container, *argv, env=None):
    cmd = ["docker", "exec"] + ["-e%s" % e for e in (env or [])] + [container] + list(argv)
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def _maria(dbs, sql):
    return _sh(
        dbs["mariadb"],
        "mariadb",
        "-uroot",
        "-N",
        "-B",
        "-D",
        "app",
        "-e",
        sql,
        env=["MYSQL_PWD=root-%s" % dbs["mariadb"][-6:]],
    )


def _pg(dbs, sql, db="app"):
    return _sh(dbs["postgres"], "psql", "-U", "postgres", "-X", "-A", "-t", "-d", db, "-c", sql)


__all__ = ["IMAGES", "PREFIX", "SOCKET", "_create", "_docker_ready", "_maria", "_pg", "_sh", "dbs"]
