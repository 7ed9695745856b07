# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A least-privilege database account for an exporter, in a MariaDB/MySQL or PostgreSQL container.

Private to this collection: not a public API, it may change in any release.

The server is reached the way the backup engines reach it (module_utils/_backup): ``docker exec`` of the server's
own client in its container, as the admin account whose password the container's environment holds
(MARIADB_ROOT_PASSWORD / MYSQL_ROOT_PASSWORD, POSTGRES_PASSWORD). What the account should be is compared with what
the server holds (privileges from information_schema or pg_auth_members, the password by logging in or by its
SCRAM verifier); only a difference writes. Statements that carry the password go to the client's stdin, never into
an argv that ``ps`` on the host would show.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import base64
import hashlib
import hmac
import re
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup import ComponentSpec, Settings, engine_for
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_mariadb import ident as my_ident
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_mariadb import literal as my_literal
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_postgres import ident as pg_ident
from ansible_collections.opsbook.stack.plugins.module_utils._backup.engine_postgres import literal as pg_literal
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import BackupError
from ansible_collections.opsbook.stack.plugins.module_utils._backup.sql import SqlEngine

# The account names this module manages: a name an operator can also type in a DSN without quoting.
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
# A MySQL account's host part: a name, an address or a pattern with % and _.
HOST_RE = re.compile(r"^[A-Za-z0-9.%_:-]{1,255}$")
# What it never manages: the servers' own admin and system accounts.
RESERVED = {"root", "mysql", "mariadb.sys", "mysql.sys", "mysql.session", "mysql.infoschema", "postgres"}
# PostgreSQL's role attributes, all of which an exporter account has off (LOGIN aside).
PG_ATTRIBUTES = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")


class AccountError(Exception):
    pass


def check_name(name: str) -> None:
    if not NAME_RE.match(name or "") or name in RESERVED:
        raise AccountError(
            "name %r: use 1-32 letters, digits and '_', starting with a letter or '_', and not one of the server's "
            "own accounts (%s)" % (name, ", ".join(sorted(RESERVED)))
        )


def scram_matches(verifier: str, password: str) -> bool:
    """Whether password is the one PostgreSQL's SCRAM-SHA-256 verifier (pg_authid.rolpassword) was made from."""
    match = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$", verifier or "")
    if not match:
        return False
    iterations, salt, stored_key = int(match.group(1)), base64.b64decode(match.group(2)), match.group(3)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(base64.b64encode(hashlib.sha256(client_key).digest()).decode(), stored_key)


def md5_matches(verifier: str, password: str, name: str) -> bool:
    return hmac.compare_digest(verifier or "", "md5" + hashlib.md5((password + name).encode()).hexdigest())


class Account:
    """One account of one server; subclasses know the server's catalog."""

    def __init__(self, kind: str, container: str, name: str, docker_host: str, timeout: float = 60.0):
        check_name(name)
        self.name = name
        self.container = container
        try:
            engine = engine_for(
                ComponentSpec(name="account", type=kind, container=container),
                Settings(docker_host=docker_host, timeout=timeout),
            )
            if not isinstance(engine, SqlEngine):
                raise AccountError("type %r is not a SQL server" % kind)
            self.engine: t.Any = engine
            self.admin, self.admin_env = self.engine.credentials(container)
        except BackupError as exc:
            raise AccountError(str(exc)) from exc

    def rows(self, query: str) -> list[list[str]]:
        try:
            return self.engine.sql(self.container, query, "", self.admin_env, self.admin)
        except BackupError as exc:
            raise AccountError(str(exc)) from exc

    def script(self, argv: list[str], statements: list[str], what: str) -> None:
        """Run statements through the client's stdin (they may hold the password)."""
        data = ("\n".join(statements) + "\n").encode()
        chunks = [data, b""]
        try:
            res = self.engine.exec_stream(
                self.container, argv, env=self.admin_env, stdin_source=lambda: chunks.pop(0), keep_stdout=65536
            )
            self.engine.check(res, what, container=self.container)
        except BackupError as exc:
            raise AccountError(str(exc)) from exc

    def state(self, password: str) -> dict[str, t.Any]:
        raise NotImplementedError

    def wanted(self) -> dict[str, t.Any]:
        raise NotImplementedError

    def apply(self, password: str, now: dict[str, t.Any]) -> None:
        """Make the account what wanted() says; now is its state() as read before (no second read)."""
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError


class MySQLAccount(Account):
    """MariaDB or MySQL: ``'<name>'@'<host>'`` with PROCESS, replication status and SELECT on performance_schema."""

    def __init__(self, kind: str, container: str, name: str, docker_host: str, host: str = "%", **kw: t.Any):
        if not HOST_RE.match(host or ""):
            raise AccountError(
                "host %r: use a host name, an address or a pattern of letters, digits, . %% _ : -" % host
            )
        super().__init__(kind, container, name, docker_host, **kw)
        self.host = host
        self.user = "%s@%s" % (my_literal(name), my_literal(host))
        version = self.rows("SELECT VERSION()")[0][0]
        numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
        # MariaDB 10.5 split REPLICATION CLIENT into BINLOG MONITOR and SLAVE MONITOR (SHOW SLAVE STATUS); the
        # names granted are the names information_schema reports back.
        if "mariadb" in version.lower() and numbers >= (10, 5):
            self.global_privileges = ["BINLOG MONITOR", "PROCESS", "SLAVE MONITOR"]
        else:
            self.global_privileges = ["PROCESS", "REPLICATION CLIENT"]

    def wanted(self) -> dict[str, t.Any]:
        return {"exists": True, "global": self.global_privileges, "schemas": ["performance_schema:SELECT"]}

    def state(self, password: str) -> dict[str, t.Any]:
        grantee = my_literal(self.user)
        exists = (
            self.rows(
                "SELECT COUNT(*) FROM mysql.user WHERE User = %s AND Host = %s"
                % (my_literal(self.name), my_literal(self.host))
            )[0][0]
            != "0"
        )
        if not exists:
            return {"exists": False, "global": [], "schemas": [], "password_ok": False}
        global_privileges = sorted(
            r[0]
            for r in self.rows(
                "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s" % grantee
            )
            if r[0] != "USAGE"
        )
        schemas = sorted(
            "%s:%s" % (r[0], r[1])
            for r in self.rows(
                "SELECT TABLE_SCHEMA, PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = %s"
                " UNION SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME), PRIVILEGE_TYPE"
                " FROM information_schema.TABLE_PRIVILEGES WHERE GRANTEE = %s" % (grantee, grantee)
            )
        )
        login = self.engine.run(
            self.container,
            [self.engine.client_tool(self.container), "--protocol=TCP", "-h", "127.0.0.1", "-u", self.name, "-N", "-B",
             "-e", "SELECT 1"],
            env={"MYSQL_PWD": password},
        )  # fmt: skip
        return {"exists": True, "global": global_privileges, "schemas": schemas, "password_ok": login.exit_code == 0}

    def _client(self) -> list[str]:
        return [self.engine.client_tool(self.container), "-u", self.admin]

    def apply(self, password: str, now: dict[str, t.Any]) -> None:
        secret = my_literal(password)
        self.script(
            self._client(),
            [
                "CREATE USER IF NOT EXISTS %s IDENTIFIED BY %s;" % (self.user, secret),
                "ALTER USER %s IDENTIFIED BY %s;" % (self.user, secret),
                "REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s;" % self.user,
                "GRANT %s ON *.* TO %s;" % (", ".join(self.global_privileges), self.user),
                "GRANT SELECT ON %s.* TO %s;" % (my_ident("performance_schema"), self.user),
            ],
            "creating account %s" % self.name,
        )

    def drop(self) -> None:
        self.script(self._client(), ["DROP USER IF EXISTS %s;" % self.user], "dropping account %s" % self.name)


class PostgresAccount(Account):
    """PostgreSQL: a LOGIN role with every other attribute off, a member of pg_monitor and of nothing else."""

    def wanted(self) -> dict[str, t.Any]:
        return {"exists": True, "attributes": [], "member_of": ["pg_monitor"]}

    def state(self, password: str) -> dict[str, t.Any]:
        name = pg_literal(self.name)
        found = self.rows(
            "SELECT rolcanlogin, %s, COALESCE(rolpassword, '') FROM pg_authid WHERE rolname = %s"
            % (", ".join(PG_ATTRIBUTES), name)
        )
        if not found:
            return {"exists": False, "attributes": [], "member_of": [], "password_ok": False}
        row = found[0]
        # LOGIN should be on, every other attribute off: the ones that are not as they should be.
        attributes = ["rolcanlogin"] if row[0] != "t" else []
        attributes += [a for i, a in enumerate(PG_ATTRIBUTES) if row[i + 1] == "t"]
        verifier = row[-1]
        member_of = sorted(
            r[0]
            for r in self.rows(
                "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
                " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s" % name
            )
        )
        password_ok = scram_matches(verifier, password) or md5_matches(verifier, password, self.name)
        return {"exists": True, "attributes": attributes, "member_of": member_of, "password_ok": password_ok}

    def _client(self) -> list[str]:
        return ["psql", "-U", self.admin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]

    def apply(self, password: str, now: dict[str, t.Any]) -> None:
        role, name = pg_ident(self.name), pg_literal(self.name)
        others = [r for r in now["member_of"] if r != "pg_monitor"]
        self.script(
            self._client(),
            [
                "SELECT format('CREATE ROLE %%I', %s) WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)"
                " \\gexec" % (name, name),
                "ALTER ROLE %s WITH LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS PASSWORD %s;"
                % (role, pg_literal(password)),
                "GRANT pg_monitor TO %s;" % role,
            ]
            + ["REVOKE %s FROM %s;" % (pg_ident(other), role) for other in others],
            "creating role %s" % self.name,
        )

    def drop(self) -> None:
        self.script(self._client(), ["DROP ROLE IF EXISTS %s;" % pg_ident(self.name)], "dropping role %s" % self.name)


def account_for(
    kind: str, container: str, name: str, docker_host: str, host: str = "%", timeout: float = 60.0
) -> Account:
    if kind in ("mariadb", "mysql"):
        return MySQLAccount(kind, container, name, docker_host, host=host, timeout=timeout)
    if kind == "postgres":
        return PostgresAccount(kind, container, name, docker_host, timeout=timeout)
    raise AccountError("type %r: use mariadb, mysql or postgres" % kind)


def differences(account: Account, password: str) -> tuple[dict[str, t.Any], list[str]]:
    """(the account's state without the password, what differs from the wanted state: a list of field names)."""
    now = account.state(password)
    wanted = account.wanted()
    differ = [key for key, value in wanted.items() if now.get(key) != value]
    if now["exists"] and not now["password_ok"]:
        differ.append("password")
    return {k: v for k, v in now.items() if k != "password_ok"}, differ


__all__ = ["Account", "AccountError", "account_for", "check_name", "differences", "md5_matches", "scram_matches"]
