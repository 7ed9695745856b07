# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""compose_app's release plan (roles/compose_app/tasks/plan.yml) run by ansible-playbook on localhost.

A converge must not move a service back to an older release behind the operator's back, and a running web
service that Nginx routes to changes image only through the rolling upgrade (docs/contracts.md, "Rolling upgrade,
start-first"). The journal, the running containers and the upstream files are given as the registered results
of release_info, compose_diagnose and stat.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
from pathlib import Path

import jinja2
import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.module_utils._upstream import hosts_file_for, upstream_name
from ansible_collections.opsbook.stack.tests.unit.local_play import run_plays

ROLE = Path(__file__).resolve().parents[4] / "roles" / "compose_app"
REPO = "registry:5000/demo-backend"


def release(rid: str, backend_tag: str, status: str = "succeeded") -> dict:
    return {
        "id": rid,
        "status": status,
        "services": {
            "backend": {"image": "%s:%s" % (REPO, backend_tag)},
            "redis": {"image": "registry:5000/redis:7.0"},
        },
    }


def document(backend_tag: str) -> dict:
    return {
        "services": {
            "backend": {"image": "%s:%s" % (REPO, backend_tag), "labels": {"io.opsbook.role": "web"}},
            "redis": {"image": "registry:5000/redis:7.0", "labels": {"io.opsbook.role": "stateful"}},
        }
    }


def facts(inventory_tag: str, journal: list[dict], running_tag: str | None, routed: bool = True, **extra) -> dict:
    current = journal[-1]["id"] if journal else None
    running = []
    if running_tag:
        running = [
            {"service": "backend", "status": "running", "image": "%s:%s" % (REPO, running_tag)},
            {"service": "backend", "status": "running", "image": "%s:%s" % (REPO, running_tag)},
            {"service": "redis", "status": "running", "image": "registry:5000/redis:7.0"},
        ]
    return {
        "compose_app_document": document(inventory_tag),
        "compose_app_allow_downgrade": False,
        "compose_app_journal_drift": "follow",
        "__compose_app_journal": {"releases": journal, "current": current, "latest": journal[-1] if journal else None},
        "__compose_app_running": {"containers": running},
        "__compose_app_upstreams": {"results": [{"item": "backend", "stat": {"exists": routed}}]},
        **extra,
    }


def run_plan(tmp_path, given: dict) -> tuple[int, dict, str]:
    out = tmp_path / "plan.json"
    keep = {"content": "{{ __compose_app_plan | to_json }}", "dest": str(out)}
    tasks = [
        {"name": "The plan", "ansible.builtin.import_tasks": str(ROLE / "tasks" / "plan.yml")},
        {"name": "Keep it", "ansible.builtin.copy": keep},
    ]
    proc = run_plays(tmp_path, [{"gather_facts": False, "tasks": tasks}], given)
    plan = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, plan, proc.stdout + proc.stderr


def test_an_older_inventory_tag_keeps_the_journals_release_and_says_which_variable(tmp_path):
    journal = [release("r1", "1.0"), release("r2", "2.0")]
    rc, plan, output = run_plan(tmp_path, facts("1.0", journal, running_tag="2.0"))
    assert rc == 0, output[-3000:]
    assert plan["targets"]["backend"] == REPO + ":2.0"
    assert plan["rollouts"] == {}  # 2.0 runs and stays: nothing to recreate
    assert "the inventory says %s:1.0, the journal's current release r2 runs %s:2.0" % (REPO, REPO) in output
    assert "compose_app_allow_downgrade: true" in output


def test_with_the_journal_drift_set_to_fail_the_converge_stops_naming_both_versions(tmp_path):
    journal = [release("r1", "1.0"), release("r2", "2.0")]
    rc, plan, output = run_plan(tmp_path, facts("1.0", journal, "2.0", compose_app_journal_drift="fail"))
    assert rc == 2 and plan == {}
    assert "%s:1.0" % REPO in output and "%s:2.0" % REPO in output
    assert "compose_app_allow_downgrade" in output and "Nothing was changed" in output


def test_allow_downgrade_lets_the_inventory_win_through_the_rolling_upgrade(tmp_path):
    journal = [release("r1", "1.0"), release("r2", "2.0")]
    rc, plan, output = run_plan(tmp_path, facts("1.0", journal, "2.0", compose_app_allow_downgrade=True))
    assert rc == 0, output[-3000:]
    assert plan["targets"]["backend"] == REPO + ":1.0"
    assert plan["rollouts"] == {"backend": {"from": REPO + ":2.0", "to": REPO + ":1.0"}}


def test_a_newer_inventory_tag_is_an_upgrade_through_the_rolling_upgrade_not_a_recreate(tmp_path):
    journal = [release("r1", "1.0")]
    rc, plan, output = run_plan(tmp_path, facts("2.0", journal, "1.0"))
    assert rc == 0, output[-3000:]
    assert plan["targets"]["backend"] == REPO + ":2.0" and plan["drift"] == []
    assert plan["rollouts"] == {"backend": {"from": REPO + ":1.0", "to": REPO + ":2.0"}}
    assert "redis" not in plan["rollouts"]  # stateful: Compose recreates it as before


def test_going_forward_again_after_a_rollback_is_an_upgrade(tmp_path):
    journal = [release("r1", "1.0"), release("r2", "2.0"), release("r3", "1.0")]
    rc, plan, _output = run_plan(tmp_path, facts("2.0", journal, "1.0"))
    assert rc == 0 and plan["targets"]["backend"] == REPO + ":2.0" and plan["drift"] == []


def test_a_non_version_tag_an_earlier_release_ran_counts_as_going_back(tmp_path):
    journal = [release("r1", "sha-aaa"), release("r2", "sha-bbb")]
    rc, plan, _output = run_plan(tmp_path, facts("sha-aaa", journal, "sha-bbb"))
    assert rc == 0 and plan["targets"]["backend"] == REPO + ":sha-bbb" and len(plan["drift"]) == 1
    rc, plan, _output = run_plan(tmp_path, facts("sha-ccc", journal, "sha-bbb"))
    assert rc == 0 and plan["targets"]["backend"] == REPO + ":sha-ccc" and plan["drift"] == []


@pytest.mark.parametrize(
    "case", ["first deploy", "not routed by Nginx", "stopped"], ids=["first-deploy", "no-upstream", "stopped"]
)
def test_no_rolling_upgrade_where_no_traffic_runs(tmp_path, case):
    journal = [] if case == "first deploy" else [release("r1", "1.0")]
    running = None if case in ("first deploy", "stopped") else "1.0"
    rc, plan, output = run_plan(tmp_path, facts("2.0", journal, running, routed=case != "not routed by Nginx"))
    assert rc == 0, output[-3000:]
    assert plan["targets"]["backend"] == REPO + ":2.0" and plan["rollouts"] == {}


def test_the_route_compose_app_looks_for_is_the_hosts_file_the_nginx_role_writes():
    """The plan moves a running web service by rolling upgrade only when release.yml finds its route. It looked for
    the upstream block file of earlier releases (<project>_<service>.conf) after routing moved to the resolver's
    hosts files, found none, and recreated the routed backend stop-first: 263-538 HTTP 502 under load in the
    molecule runbooks scenario. The path must be the one the one upstream function writes."""
    tasks = yaml.safe_load((ROLE / "tasks" / "release.yml").read_text())
    stat = next(t for t in tasks if t.get("register") == "__compose_app_upstreams")["ansible.builtin.stat"]
    path = jinja2.Template(stat["path"]).render(
        compose_app_upstream_dir="/etc/nginx/upstreams.d", compose_app_project="demo", item="backend"
    )
    assert path == hosts_file_for(upstream_name("demo", "backend"), "/etc/nginx/upstreams.d")
