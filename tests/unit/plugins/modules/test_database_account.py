# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""database_account against real MariaDB 10.11 and PostgreSQL 15 servers (issue 20, item 5): the exporter's account
reads the server's status and none of the application's data; a second run changes nothing; a changed password,
an extra privilege or an extra attribute is corrected; check mode writes nothing; bad input is refused before the
server is touched."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import subprocess

import pytest

from ansible_collections.opsbook.stack.plugins.module_utils._db_account import scram_matches
from ansible_collections.opsbook.stack.plugins.modules import database_account
from ansible_collections.opsbook.stack.tests.unit.db_containers import _maria, _pg
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module

FIRST = "exporter-pw-Canary-1"
SECOND = "exporter-pw-Canary-2"


def account(capsys, **args) -> dict:
    result = run_module(database_account, args, capsys)
    for secret in (FIRST, SECOND):
        assert secret not in json.dumps(result), "the password reached the module's result"
    return result


def as_exporter_maria(dbs, sql: str, password: str, name: str = "opsbook_exporter") -> subprocess.CompletedProcess:
    """sql as the exporter account, over TCP the way mysqld_exporter connects."""
    argv = ["docker", "exec", "-e", "MYSQL_PWD=" + password, dbs["mariadb"], "mariadb", "--protocol=TCP", "-h",
            "127.0.0.1", "-u", name, "-N", "-B", "-e", sql]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def as_exporter_pg(dbs, sql: str, db: str = "postgres") -> subprocess.CompletedProcess:
    argv = ["docker", "exec", dbs["postgres"], "psql", "-U", "opsbook_exporter", "-X", "-A", "-t", "-v",
            "ON_ERROR_STOP=1", "-d", db, "-c", sql]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.docker
def test_mariadb_exporter_account_reads_status_and_no_data(dbs, capsys):
    _maria(
        dbs,
        "CREATE TABLE IF NOT EXISTS app.account_probe (id INT PRIMARY KEY); REPLACE INTO app.account_probe VALUES (1)",
    )
    base = {"container": dbs["mariadb"], "type": "mariadb"}
    try:
        first = account(capsys, **base, password=FIRST)
        assert first["changed"] is True and "exists" in first["differences"], first
        assert first["wanted"]["global"] == ["BINLOG MONITOR", "PROCESS", "SLAVE MONITOR"]
        # What mysqld_exporter's default collectors read works...
        for sql in (
            "SHOW GLOBAL STATUS LIKE 'Uptime'",
            "SHOW GLOBAL VARIABLES LIKE 'max_connections'",
            "SELECT COUNT(*) FROM performance_schema.setup_instruments",
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST",
            "SHOW SLAVE STATUS",
        ):
            done = as_exporter_maria(dbs, sql, FIRST)
            assert done.returncode == 0, (sql, done.stderr)
        # ...and nothing of the application's data, nor any change.
        for sql in ("SELECT * FROM app.account_probe", "CREATE DATABASE stolen", "DELETE FROM app.account_probe",
                    "SELECT User FROM mysql.user"):  # fmt: skip
            done = as_exporter_maria(dbs, sql, FIRST)
            assert done.returncode != 0 and "denied" in done.stderr, (sql, done.stdout, done.stderr)
        assert "app" not in as_exporter_maria(dbs, "SHOW DATABASES", FIRST).stdout.split()

        again = account(capsys, **base, password=FIRST)
        assert again["changed"] is False and again["differences"] == [], again

        planned = account(capsys, **base, password=SECOND, _ansible_check_mode=True)
        assert planned["changed"] is True and planned["differences"] == ["password"], planned
        assert as_exporter_maria(dbs, "SELECT 1", FIRST).returncode == 0, "check mode changed the password"

        changed = account(capsys, **base, password=SECOND)
        assert changed["changed"] is True and changed["differences"] == ["password"]
        assert as_exporter_maria(dbs, "SELECT 1", FIRST).returncode != 0
        assert as_exporter_maria(dbs, "SELECT 1", SECOND).returncode == 0

        _maria(dbs, "GRANT SELECT ON app.* TO 'opsbook_exporter'@'%'; GRANT SUPER ON *.* TO 'opsbook_exporter'@'%'")
        corrected = account(capsys, **base, password=SECOND)
        assert corrected["changed"] is True and corrected["differences"] == ["global", "schemas"], corrected
        assert "app:SELECT" in corrected["account"]["schemas"]
        assert as_exporter_maria(dbs, "SELECT * FROM app.account_probe", SECOND).returncode != 0
        assert account(capsys, **base, password=SECOND)["changed"] is False
    finally:
        gone = account(capsys, **base, state="absent")
    assert gone["changed"] is True and gone["differences"] == ["exists"]
    assert _maria(dbs, "SELECT COUNT(*) FROM mysql.user WHERE User = 'opsbook_exporter'").strip() == "0"
    assert account(capsys, **base, state="absent")["changed"] is False


@pytest.mark.docker
def test_postgres_exporter_account_is_a_pg_monitor_member_and_nothing_else(dbs, capsys):
    if _pg(dbs, "SELECT 1 FROM pg_database WHERE datname = 'acct_probe'", db="postgres").strip() != "1":
        _pg(dbs, "CREATE DATABASE acct_probe", db="postgres")
    _pg(dbs, "CREATE TABLE IF NOT EXISTS secrets (v text); INSERT INTO secrets VALUES ('x')", db="acct_probe")
    base = {"container": dbs["postgres"], "type": "postgres"}

    def verifier() -> str:
        return _pg(dbs, "SELECT rolpassword FROM pg_authid WHERE rolname = 'opsbook_exporter'", db="postgres").strip()

    try:
        first = account(capsys, **base, password=FIRST)
        assert first["changed"] is True and "exists" in first["differences"], first
        assert scram_matches(verifier(), FIRST) and not scram_matches(verifier(), SECOND)
        done = as_exporter_pg(dbs, "SELECT count(*) FROM pg_stat_activity WHERE query <> '<insufficient privilege>'")
        assert done.returncode == 0 and int(done.stdout) >= 1, done.stderr
        assert as_exporter_pg(dbs, "SELECT pg_database_size('acct_probe')").returncode == 0
        for sql, db in (("SELECT * FROM secrets", "acct_probe"), ("CREATE DATABASE stolen", "postgres"),
                        ("CREATE ROLE other", "postgres"), ("SELECT * FROM pg_authid", "postgres")):  # fmt: skip
            done = as_exporter_pg(dbs, sql, db)
            assert done.returncode != 0 and "denied" in done.stderr, (sql, done.stdout, done.stderr)

        again = account(capsys, **base, password=FIRST)
        assert again["changed"] is False and again["differences"] == [], again

        planned = account(capsys, **base, password=SECOND, _ansible_check_mode=True)
        assert planned["changed"] is True and planned["differences"] == ["password"], planned
        assert scram_matches(verifier(), FIRST), "check mode changed the password"
        assert account(capsys, **base, password=SECOND)["differences"] == ["password"]
        assert scram_matches(verifier(), SECOND)

        _pg(dbs, "ALTER ROLE opsbook_exporter CREATEDB; GRANT pg_read_server_files TO opsbook_exporter", db="postgres")
        corrected = account(capsys, **base, password=SECOND)
        assert corrected["changed"] is True and corrected["differences"] == ["attributes", "member_of"], corrected
        assert corrected["account"]["member_of"] == ["pg_monitor", "pg_read_server_files"]
        assert account(capsys, **base, password=SECOND)["changed"] is False
        assert as_exporter_pg(dbs, "CREATE DATABASE stolen").returncode != 0
    finally:
        gone = account(capsys, **base, state="absent")
    assert gone["changed"] is True
    assert _pg(dbs, "SELECT count(*) FROM pg_roles WHERE rolname = 'opsbook_exporter'", db="postgres").strip() == "0"


@pytest.mark.parametrize(
    "args, named",
    [
        ({"name": "root"}, "name 'root'"),
        ({"name": "x'; DROP USER root; --"}, "name"),
        ({"name": "postgres", "type": "postgres"}, "name 'postgres'"),
        ({"host": "%' OR '1"}, "host"),
        ({"password": ""}, "password"),
        pytest.param({}, "opsbook-no-such-db does not exist", marks=pytest.mark.docker),
    ],
)
def test_bad_input_is_refused_naming_it(capsys, args, named):
    given = {"container": "opsbook-no-such-db", "type": "mariadb", "password": FIRST, **args}
    result = account(capsys, **given)
    assert result["failed"] is True and named in result["msg"], result["msg"]
