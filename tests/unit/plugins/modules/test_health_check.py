# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The health_check module as Ansible runs it: main() with module args, JSON result on stdout."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json

import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.module_utils._probes import parse_probes
from ansible_collections.opsbook.stack.plugins.modules import health_check
from ansible_collections.opsbook.stack.tests.unit.doc_contract import check_documentation
from ansible_collections.opsbook.stack.tests.unit.module_args import patch_module_args


def run_module(args: dict, capsys) -> dict:
    """Run main() and return the result the module printed."""
    with patch_module_args(args), pytest.raises(SystemExit):
        health_check.main()
    out = capsys.readouterr().out
    return json.loads(out)


def test_healthy_run(http_server, tcp_listener, capsys):
    result = run_module(
        {
            "probes": [
                {"type": "http", "name": "api", "url": http_server.url("/ok"), "body_pattern": "ok"},
                {"type": "tcp", "name": "redis", "host": "127.0.0.1", "port": tcp_listener},
            ]
        },
        capsys,
    )
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["healthy"] is True
    assert result["summary"] == "2/2 probes healthy"
    assert result["failed_probes"] == []
    assert [(p["name"], p["ok"], p["status"]) for p in result["probes"]] == [
        ("api", True, 200),
        ("redis", True, "open"),
    ]


def test_unhealthy_run_fails_with_an_actionable_message(http_server, closed_port, capsys):
    result = run_module(
        {
            "probes": [
                {"type": "http", "name": "api", "url": http_server.url("/ok")},
                {"type": "http", "name": "frontend", "url": http_server.url("/status/502")},
                {"type": "tcp", "name": "db", "host": "127.0.0.1", "port": closed_port, "retries": 1, "delay": 0.05},
            ]
        },
        capsys,
    )
    assert result["failed"] is True and result["changed"] is False
    assert result["healthy"] is False
    assert result["failed_probes"] == ["frontend", "db"]
    assert result["msg"].startswith("2 of 3 probes unhealthy: ")
    assert "[frontend] http GET %s: HTTP 502 (expected 200)" % http_server.url("/status/502") in result["msg"]
    assert "[db] tcp 127.0.0.1:%d: connection refused" % closed_port in result["msg"]
    assert "(after 2 attempts)" in result["msg"]
    assert result["probes"][1]["evidence"]["body"] == "status page\n"


def test_fail_on_unhealthy_false_reports_without_failing(http_server, capsys):
    result = run_module(
        {"fail_on_unhealthy": False, "probes": [{"type": "http", "url": http_server.url("/status/500")}]}, capsys
    )
    assert "failed" not in result or result["failed"] is False
    assert result["healthy"] is False and result["failed_probes"] == [http_server.url("/status/500")]
    assert result["summary"].startswith("0/1 probes healthy")


def test_check_mode_runs_the_probes(http_server, capsys):
    result = run_module(
        {"_ansible_check_mode": True, "probes": [{"type": "http", "url": http_server.url("/ok")}]}, capsys
    )
    assert result["changed"] is False and result["healthy"] is True
    assert "skipped" not in result


@pytest.mark.parametrize(
    "probes, message",
    [
        (
            [{"type": "tcp", "host": "h", "port": 1}, {"type": "tcp", "host": "h", "port": 2}, {"type": "http"}],
            "probes[2]: type 'http' needs 'url'",
        ),
        ([{"type": "ftp"}], "probes[0]: unknown type 'ftp' (expected one of: http, tcp, container, exec)"),
        (
            [{"type": "tcp", "host": "h", "port": 1, "container": "web"}],
            "probes[0]: field(s) 'container' do not apply to type 'tcp'",
        ),
        (
            [{"type": "exec", "container": "db", "command": "mysqladmin ping"}],
            "probes[0]: 'command' is one argv element with spaces",
        ),
        ([], "probes is empty"),
    ],
)
def test_argument_errors(probes, message, capsys):
    result = run_module({"probes": probes}, capsys)
    assert result["failed"] is True
    assert message in result["msg"]


def test_argument_spec_rejects_typos(capsys):
    result = run_module({"probes": [{"type": "http", "url": "http://x/", "timout": 3}]}, capsys)
    assert result["failed"] is True and "timout" in result["msg"]


def test_docker_host_falls_back_to_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix://%s/elsewhere.sock" % tmp_path)
    result = run_module({"probes": [{"type": "container", "container": "web"}]}, capsys)
    assert result["failed"] is True
    assert "Docker socket %s/elsewhere.sock does not exist" % tmp_path in result["msg"]


# --------------------------------------------------------------------------------------------------------
# Documentation agrees with the code (ansible-test validate-modules checks more; this runs with pytest)
# --------------------------------------------------------------------------------------------------------


def test_documentation_matches_argument_spec():
    doc = check_documentation(health_check)
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] == "none"
    assert doc["version_added"] == "0.1.0"
    assert doc["module"] == "health_check"
    assert doc["options"]["docker_host"]["default"] == "unix:///var/run/docker.sock"


def test_examples_are_valid_probe_lists():
    tasks = yaml.safe_load(health_check.EXAMPLES)
    used = [task["opsbook.stack.health_check"] for task in tasks if "opsbook.stack.health_check" in task]
    assert len(used) == 3
    for args in used:
        assert parse_probes(args["probes"])
    assert all(
        set(task) - {"name", "register", "when"} <= {"opsbook.stack.health_check", "ansible.builtin.debug"}
        for task in tasks
    )


def test_return_documents_every_result_key(http_server, capsys):
    result = run_module({"probes": [{"type": "http", "url": http_server.url("/ok")}]}, capsys)
    documented = yaml.safe_load(health_check.RETURN)
    assert set(result) - {"changed", "invocation"} == set(documented)
    assert set(result["probes"][0]) == set(documented["probes"]["contains"])
