# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pieces of the _upgrade package on their own: compose config parsing, the checked compose file edit, the
compose CLI's errors, a service's containers from the Engine's list, and the journal's release helpers."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import hashlib
import os
import shutil
import subprocess

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._compose import compose_files_hash, project_compose_files
from ansible_collections.opsbook.stack.plugins.module_utils._journal import (
    Journal,
    Release,
    ServiceImage,
    build_release,
    intact,
    runs_now,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import (
    ComposeCli,
    ComposeFile,
    ComposeService,
    DockerFacts,
    ServicePlan,
    UpgradeError,
    parse_services,
)

COMPOSE = "services:\n  web:\n    image: reg/web:1\n"


def test_parse_services_reads_role_port_replicas_and_healthcheck():
    services = parse_services(
        {
            "services": {
                "web": {
                    "image": "reg/web:1",
                    "deploy": {"replicas": 3},
                    "labels": ["io.opsbook.port=8000"],
                    "healthcheck": {"test": ["CMD", "true"]},
                },
                "db": {"image": "pg:15", "labels": {"io.opsbook.role": "stateful"}, "healthcheck": {"disable": True}},
                "worker": {"image": "reg/w:1", "scale": 2},
            }
        }
    )
    assert services["web"] == ComposeService("web", "reg/web:1", 3, "web", 8000, True)
    assert services["db"] == ComposeService("db", "pg:15", 1, "stateful", None, False)
    assert services["worker"] == ComposeService("worker", "reg/w:1", 2, "worker", None, False)


def test_compose_file_edit_is_checked_before_it_replaces_the_file(tmp_path):
    path = tmp_path / "compose.yaml"
    path.write_text(COMPOSE)
    os.chmod(path, 0o640)
    seen = []

    def config(candidate):
        text = open(candidate, encoding="utf-8").read()
        if candidate != str(path):
            seen.append((os.path.dirname(candidate), text))
        image = "reg/web:2" if ":2" in text else "reg/web:1"
        return {"web": ComposeService("web", image, 1, "web", None, False)}

    edit = ComposeFile(str(path), config)
    before = edit.set_image("web", "reg/web:2")
    assert before == COMPOSE and path.read_text() == COMPOSE.replace(":1", ":2")
    assert seen == [(str(tmp_path), COMPOSE.replace(":1", ":2"))]  # checked beside the real file
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["compose.yaml"]  # no candidate or temporary file left
    edit.restore(before)
    assert path.read_text() == COMPOSE


def test_a_compose_file_edit_that_compose_reads_otherwise_changes_nothing(tmp_path):
    path = tmp_path / "compose.yaml"
    path.write_text(COMPOSE)
    edit = ComposeFile(str(path), lambda candidate: {})
    with pytest.raises(UpgradeError, match="does not give service web the image reg/web:2"):
        edit.set_image("web", "reg/web:2")
    assert path.read_text() == COMPOSE and os.listdir(tmp_path) == ["compose.yaml"]


def test_an_edit_that_moves_another_service_too_is_refused(tmp_path):
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  web: &w\n    image: reg/web:1\n  copy:\n    <<: *w\n")

    def config(candidate):
        image = "reg/web:2" if ":2" in open(candidate, encoding="utf-8").read() else "reg/web:1"
        return {name: ComposeService(name, image, 1, "web", None, False) for name in ("web", "copy")}

    edit = ComposeFile(str(path), config)
    with pytest.raises(UpgradeError, match=r"would change the image of copy too .*compose.yaml|would change"):
        edit.check_all({"web": "reg/web:2"})
    with pytest.raises(UpgradeError, match="cannot set the image of service nosuch in %s" % path):
        edit.check_all({"nosuch": "reg/web:2"})
    assert path.read_text().count("reg/web:1") == 1  # the file was not touched


def test_compose_cli_argv_and_a_missing_binary(tmp_path, monkeypatch):
    cli = ComposeCli("demo", str(tmp_path), str(tmp_path / "compose.yaml"))
    assert cli.argv("ps") == [
        "docker",
        "compose",
        "--project-name",
        "demo",
        "--project-directory",
        str(tmp_path),
        "--file",
        str(tmp_path / "compose.yaml"),
        "ps",
    ]
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker binary here
    with pytest.raises(UpgradeError, match="docker compose is not installed on this host"):
        cli.run("ps")


class ListingClient:
    def __init__(self, items):
        self.items = items
        self.asked = []

    def list_containers(self, labels=None, all=False):  # pylint: disable=redefined-builtin
        self.asked.append((labels, all))
        return self.items


def item(cid, number, created, ports, oneoff=False):
    labels = {"com.docker.compose.service": "web", "com.docker.compose.container-number": str(number)}
    if oneoff:
        labels["com.docker.compose.oneoff"] = "True"
    return {
        "Id": cid,
        "Names": ["/demo-web-%d" % number],
        "ImageID": "sha256:x",
        "State": "running",
        "Created": created,
        "Labels": labels,
        "Ports": ports,
    }


def test_containers_of_a_service_oldest_first_with_their_loopback_port():
    client = ListingClient(
        [
            item("b", 2, 20, [{"IP": "127.0.0.1", "PrivatePort": 8000, "PublicPort": 30002, "Type": "tcp"}]),
            item("a", 1, 10, [{"IP": "0.0.0.0", "PrivatePort": 8000, "PublicPort": 30001, "Type": "tcp"}]),
            item("c", 3, 30, [{"IP": "10.0.0.5", "PrivatePort": 8000, "PublicPort": 30003, "Type": "tcp"}]),
            item("run", 1, 5, [], oneoff=True),
        ]
    )
    found = DockerFacts(client, "demo").containers("web", 8000)
    assert [(c.id, c.name, c.host_port) for c in found] == [
        ("a", "demo-web-1", 30001),
        ("b", "demo-web-2", 30002),
        ("c", "demo-web-3", None),  # published elsewhere than loopback or every interface
    ]
    assert client.asked == [({"com.docker.compose.project": "demo", "com.docker.compose.service": "web"}, True)]
    assert DockerFacts(client, "demo").containers("web")[0].host_port is None


def test_a_reversed_plan_goes_back_where_it_came_from():
    plan = ServicePlan("web", "web", "rolling", 2, "reg/web:1", ["sha256:one"], "d1", "reg/web:2", "sha256:two", "d2")
    back = plan.reversed()
    assert (back.from_image, back.to_image, back.to_image_id, back.to_digest) == (
        "reg/web:2",
        "reg/web:1",
        "sha256:one",
        "d1",
    )


def test_build_release_hashes_the_compose_file_and_follows_the_previous(tmp_path):
    compose = tmp_path / "compose.yaml"
    compose.write_text(COMPOSE)
    journal = Journal(str(tmp_path / "j"), "demo")
    services = {"web": ServiceImage("reg/web:1", "sha256:one", "reg/web@sha256:d1")}
    first = build_release(journal, "deploy", "succeeded", str(compose), services, 0.0)
    journal.record(first)
    assert first.id == "19700101T000000Z-" + hashlib.sha256(COMPOSE.encode()).hexdigest()[:8]
    second = build_release(journal, "upgrade", "in_progress", str(compose), services, 0.0, previous=first)
    assert second.id == first.id + ".2" and second.previous == first.id and second.project == "demo"
    again = build_release(journal, "upgrade", "succeeded", str(compose), services, 0.0, release_id=second.id)
    assert again.id == second.id


def test_intact_and_runs_now():
    release = Release("r1", "demo", "deploy", "succeeded", "", 0.0, {"web": ServiceImage("reg/web:1", "sha256:one")})
    assert intact(release, {"sha256:one"}.__contains__)
    assert not intact(release, set().__contains__)
    assert not intact(Release("r0", "demo", "deploy", "succeeded", "", 0.0, {}), {"x"}.__contains__)
    assert runs_now(release, {"web": ServiceImage("reg/web:1", "sha256:one")})
    assert not runs_now(release, {"web": ServiceImage("reg/web:2", "sha256:two")})
    assert not runs_now(release, {})


def test_the_edits_check_all_proved_are_written_without_a_second_compose_run(tmp_path):
    # Each `docker compose config` costs most of a second on a busy host, before the switch of a rollback.
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  web:\n    image: reg/web:1\n  api:\n    image: reg/api:1\n")
    calls = []

    def config(candidate):
        calls.append(candidate)
        text = open(candidate, encoding="utf-8").read()
        return {
            name: ComposeService(
                name, "reg/%s:%s" % (name, "2" if "reg/%s:2" % name in text else "1"), 1, "web", None, False
            )
            for name in ("web", "api")
        }

    edit = ComposeFile(str(path), config)
    now = config(str(path))
    calls.clear()
    edit.check_all({"web": "reg/web:2", "api": "reg/api:2"}, now)
    assert len(calls) == 1
    edit.set_image("web", "reg/web:2")
    edit.set_image("api", "reg/api:2")
    assert len(calls) == 1 and path.read_text().count(":2") == 2
    edit.set_image("web", "reg/web:1")  # not a text check_all proved (a move back): checked again
    assert len(calls) == 3


def adopted_dir(tmp_path):
    """An adopted project: the operator's file, the collection's override, and .env naming both (compose_app)."""
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  web:\n    image: reg/web:1\n    container_name: web1\n    ports: ['8080:8080']\n"
        "  db:\n    image: reg/db:1\n"
    )
    (tmp_path / "compose.yaml").write_text(
        "name: demo\nservices:\n  web:\n    image: reg/web:1\n    container_name: !reset null\n"
        "    ports: !override ['127.0.0.1::8080']\n  db:\n    image: reg/db:1\n"
    )
    (tmp_path / ".env").write_text(
        "COMPOSE_FILE=%s/docker-compose.yml:%s/compose.yaml\nCOMPOSE_PATH_SEPARATOR=:\nSECRET='x'\n"
        % (tmp_path, tmp_path)
    )
    return tmp_path


def test_an_adopted_project_runs_the_operators_file_before_the_override(tmp_path):
    root = adopted_dir(tmp_path)
    files = project_compose_files(str(root))
    assert files == [str(root / "docker-compose.yml"), str(root / "compose.yaml")]
    cli = ComposeCli("demo", str(root), str(root / "compose.yaml"))
    argv = cli.argv("ps")
    assert argv[argv.index("--file") :] == ["--file", files[0], "--file", files[1], "ps"]
    # A candidate takes the override's place; the operator's file stays in front of it.
    candidate = cli.argv("config", compose_file="/tmp/cand.yaml")
    assert candidate[candidate.index("--file") :] == ["--file", files[0], "--file", "/tmp/cand.yaml", "config"]
    # A rendered project (no COMPOSE_FILE) is compose.yaml alone, and its hash is that file's sha256.
    (root / ".env").write_text("SECRET='x'\n")
    assert project_compose_files(str(root)) == [str(root / "compose.yaml")]
    digest = hashlib.sha256((root / "compose.yaml").read_bytes()).hexdigest()
    assert compose_files_hash([str(root / "compose.yaml")]) == digest


def test_the_journal_hash_of_an_adopted_project_covers_the_operators_file(tmp_path):
    root = adopted_dir(tmp_path)
    before = compose_files_hash(project_compose_files(str(root)))
    (root / "docker-compose.yml").write_text((root / "docker-compose.yml").read_text() + "# edited\n")
    assert compose_files_hash(project_compose_files(str(root))) != before


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0
    if shutil.which("docker")
    else True,
    reason="needs the docker compose plugin",
)
def test_an_upgrade_edits_the_override_only_checked_by_real_compose_on_the_pair(tmp_path):
    root = adopted_dir(tmp_path)
    given = (root / "docker-compose.yml").read_bytes()
    cli = ComposeCli("demo", str(root), str(root / "compose.yaml"))
    edit = ComposeFile(str(root / "compose.yaml"), lambda path: cli.config(compose_file=path))
    edit.check_all({"web": "reg/web:2"})
    edit.set_image("web", "reg/web:2")
    services = cli.config()
    assert services["web"].image == "reg/web:2" and services["db"].image == "reg/db:1"
    assert (root / "docker-compose.yml").read_bytes() == given
    assert "reg/web:2" in (root / "compose.yaml").read_text()
