# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Every writer of a project's compose.yaml, upstreams or journal runs under the project lock.

docs/contracts.md, "One lock per project": a task that writes (Compose up/restart, an upstream refresh, a rolling
upgrade, a journal record) sits in a block that first takes opsbook.stack.project_lock, runs with the
environment that lock returned (so the collection's modules know their play holds it), and lets go in `always`.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WRITERS = (
    "community.docker.docker_compose_v2",
    "opsbook.stack.nginx_upstream",
    "opsbook.stack.rolling_upgrade",
    "opsbook.stack.release_record",
    "ansible.builtin.copy",
)
LOCK = "opsbook.stack.project_lock"


def tasks_of(path: Path) -> list[dict]:
    data = yaml.safe_load(path.read_text())
    return data[0]["tasks"] if data and "hosts" in data[0] else data


def locked_blocks(tasks: list[dict], inherited_env: str = ""):
    """Yield (block, env) for every block whose first tasks take the lock and whose `always` releases it."""
    for task in tasks:
        if "block" not in task:
            continue
        holds = [t for t in task["block"] if LOCK in t and t[LOCK].get("state", "held") == "held"]
        releases = [t for t in task.get("always") or [] if LOCK in t and t[LOCK].get("state") == "released"]
        if holds and releases:
            yield task, holds[0].get("register", "")
        yield from locked_blocks(task["block"])


def writers_in(tasks: list[dict]) -> list[dict]:
    found = []
    for task in tasks:
        found.extend(writers_in(task.get("block") or []))
        if any(module in task for module in WRITERS):
            found.append(task)
    return found


@pytest.mark.parametrize(
    "playbook",
    [
        "playbooks/runbook_service_down.yml",
        "playbooks/runbook_high_error_rate.yml",
        "roles/nginx/tasks/configure.yml",
    ],
)
def test_each_writer_runs_inside_a_block_that_holds_the_project_lock(playbook):
    tasks = tasks_of(ROOT / playbook)
    covered = []
    for block, register in locked_blocks(tasks):
        assert register, "%s: the lock task of %r registers no result" % (playbook, block.get("name"))
        for writer in writers_in(block["block"]):
            env = str(writer.get("environment", block.get("environment", "")))
            assert register in env, "%s: %r does not run with the lock's environment" % (playbook, writer["name"])
            covered.append(writer["name"])
    writers = [
        w["name"]
        for w in writers_in(tasks)
        if "opsbook.stack.nginx_upstream" in w or "community.docker.docker_compose_v2" in w
    ]
    assert writers and sorted(writers) == sorted(covered), "%s: writers outside the lock: %s" % (
        playbook,
        sorted(set(writers) - set(covered)),
    )


def test_compose_app_holds_the_lock_around_every_task_that_writes():
    main = tasks_of(ROOT / "roles/compose_app/tasks/main.yml")
    hold = next(t for t in main if LOCK in t)
    block = next(t for t in main if "block" in t)
    assert main.index(hold) < main.index(block)
    assert hold["register"] in block["environment"]
    imported = {t["ansible.builtin.import_tasks"] for t in block["block"]}
    assert imported == {"release.yml", "configure.yml", "service.yml"}
    assert any(LOCK in t and t[LOCK]["state"] == "released" for t in block["always"])
    outside = [t.get("name") for t in main if t is not block and any(m in t for m in WRITERS)]
    assert outside == []
