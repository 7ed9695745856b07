# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The database exporters' own accounts (issue 20, item 5), offline: the preflight refuses an exporter that would
connect as the server's admin and a malformed account, naming the variable and changing nothing, without printing a
secret; an account gives the DSN the exporter is started with. The account itself is created by
opsbook.stack.database_account (tests/unit/plugins/modules/test_database_account.py) and, deployed, by the monitoring
scenario (molecule/monitoring)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json

import pytest

from ansible_collections.opsbook.stack.tests.unit.local_play import run_each
from ansible_collections.opsbook.stack.tests.unit.roles.monitoring.conftest import ROLE, play, preflight

SECRET = "Canary-exporter-pw-42"
ACCOUNT = {"container": "agentchat-mysql-1", "password": SECRET}
REFUSED = {
    "root-dsn": ({"monitoring_mysqld_exporter_dsn": "root:%s@(mysql:3306)/" % SECRET},
                 "monitoring_mysqld_exporter_dsn connects as root"),
    "postgres-dsn": ({"monitoring_postgres_exporter_dsn": "postgresql://postgres:%s@pg:5432/x" % SECRET},
                     "monitoring_postgres_exporter_dsn connects as postgres"),
    "both": ({"monitoring_mysqld_exporter_dsn": "x:%s@(mysql:3306)/" % SECRET,
              "monitoring_mysqld_exporter_account": ACCOUNT},
             "monitoring_mysqld_exporter_dsn and monitoring_mysqld_exporter_account are both set"),
    "short-password": ({"monitoring_mysqld_exporter_account": {"container": "db", "password": "short"}},
                       "monitoring_mysqld_exporter_account.password must be set"),
    "admin-name": ({"monitoring_postgres_exporter_account": {**ACCOUNT, "name": "postgres"}},
                   "monitoring_postgres_exporter_account.name"),
    "no-container": ({"monitoring_mysqld_exporter_account": {"password": SECRET}},
                     "monitoring_mysqld_exporter_account.container"),
    "bad-address": ({"monitoring_mysqld_exporter_account": {**ACCOUNT, "address": "mysql; rm -rf /"}},
                    "monitoring_mysqld_exporter_account.address"),
    "unknown-key": ({"monitoring_postgres_exporter_account": {**ACCOUNT, "superuser": True}},
                    "monitoring_postgres_exporter_account has keys"),
}  # fmt: skip


def test_the_preflight_refuses_an_admin_dsn_or_a_malformed_account_naming_it(tmp_path):
    runs = run_each(tmp_path, {name: case[0] for name, case in REFUSED.items()}, preflight)
    for name in sorted(REFUSED):
        done, named = runs[name], REFUSED[name][1]
        assert done.returncode != 0, (name, done.stdout)
        assert named in done.stdout and "Nothing was changed" in done.stdout, (name, done.stdout)
        assert SECRET not in done.stdout + done.stderr, (name, "a secret was printed")


def test_an_account_gives_the_dsns_and_passes_the_preflight(tmp_path):
    password = "p@ss/w:rd%-1234"
    given = {
        "monitoring_mysqld_exporter_account": {"container": "agentchat-mysql-1", "password": password},
        "monitoring_postgres_exporter_account": {
            "container": "ha-postgres-1",
            "password": password,
            "address": "db:5432",
        },
    }
    tasks = [
        {"ansible.builtin.import_tasks": str(ROLE / "tasks" / "preflight.yml")},
        {
            "ansible.builtin.copy": {
                "content": "{{ {'mysqld': __monitoring_mysqld_dsn, 'postgres': __monitoring_postgres_dsn} | to_json }}",
                "dest": str(tmp_path / "dsns.json"),
                "mode": "0600",
            }
        },
    ]
    done = play(tmp_path, given, tasks)
    assert done.returncode == 0, done.stdout + done.stderr
    dsns = json.loads((tmp_path / "dsns.json").read_text())
    assert dsns == {
        "mysqld": "opsbook_exporter:%s@(mysql:3306)/" % password,
        "postgres": "postgresql://opsbook_exporter:p%40ss%2Fw%3Ard%25-1234@db:5432/postgres?sslmode=disable",
    }


@pytest.mark.parametrize("given", [{}, {"monitoring_mysqld_exporter_dsn": "exporter:%s@(mysql:3306)/" % SECRET}])
def test_no_exporter_or_a_least_privilege_dsn_passes(tmp_path, given):
    done = preflight(tmp_path, given)
    assert done.returncode == 0, done.stdout + done.stderr
