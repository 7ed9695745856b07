# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""MariaDB and MySQL: mariadb-dump (or mysqldump) per database, restored through the mariadb (mysql) client.

Private to this collection: not a public API, it may change in any release.

Row counts (and, opted in, CHECKSUM TABLE) of every table go into the manifest before the dump; the drill
restores into a throwaway server and compares them.

A restore loads every dump of tables only into a scratch schema beside its database first (``<db>__opsbook_new``:
the dump's ``DROP``/``CREATE DATABASE`` and ``USE`` lines renamed on the way), so a dump that does not load leaves
every database as it was. Once all loaded, each database is swapped: with base tables only on the live side too,
by one atomic ``RENAME TABLE`` of the live tables into ``<db>__opsbook_old`` and the loaded ones into the
database, then the old schema is dropped; otherwise the proven dump is loaded into the database itself (drop and
recreate). A dump with views, routines, triggers or events is not loaded beside: their definitions may name the
database itself (the scratch load would write into the live one) and MariaDB cannot move them between schemas;
after its trial decode (complete, the right size) it is loaded into the database itself.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import re
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import container_env, first_set
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_DRILL,
    EXIT_DUMP,
    EXIT_RESTORE,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.pipeline import decompressor
from ansible_collections.opsbook.stack.plugins.module_utils._backup.sql import SqlEngine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest

SYSTEM_DATABASES = ("information_schema", "performance_schema", "sys", "mysql")


def ident(name: str) -> str:
    return "`%s`" % name.replace("`", "``")


def literal(value: str) -> str:
    return "'%s'" % value.replace("\\", "\\\\").replace("'", "''")


def scratch_name(db: str) -> str:
    """The scratch schema beside db while it loads (schema names hold 64 characters)."""
    return db[:50] + "__opsbook_new"


def old_name(db: str) -> str:
    return db[:50] + "__opsbook_old"


# The lines of a mysqldump --databases stream that name the database: renamed to load it beside.
DATABASE_LINES = (b"/*!40000 DROP DATABASE IF EXISTS ", b"CREATE DATABASE ", b"USE ")


def by_line(source: t.Callable[[], bytes], fix: t.Callable[[bytes], bytes]) -> t.Callable[[], bytes]:
    """A reader of source that passes every whole line through fix (a dump's lines, never cut in two)."""
    carry = [b""]

    def read() -> bytes:
        while True:
            block = source()
            if not block:
                rest, carry[0] = carry[0], b""
                return fix(rest)
            data = carry[0] + block
            cut = data.rfind(b"\n")
            if cut < 0:
                carry[0] = data
                continue
            carry[0] = data[cut + 1 :]
            return b"\n".join(fix(line) for line in data[:cut].split(b"\n")) + b"\n"

    return read


def renaming(source: t.Callable[[], bytes], db: str, scratch: str) -> t.Callable[[], bytes]:
    """A reader of source whose DROP DATABASE, CREATE DATABASE and USE lines name scratch instead of db."""
    old, new = ident(db).encode(), ident(scratch).encode()
    return by_line(
        source, lambda line: line.replace(old, new, 1) if line.startswith(DATABASE_LINES) and old in line else line
    )


# The accounts artifact: `mariadb-dump --system=users --insert-ignore` (CREATE USER IF NOT EXISTS, GRANT, roles).
ACCOUNTS = "accounts.sql.zst"
# Accounts every server has of its own: listed as the source's, never compared or re-created by a restore's intent.
SERVER_ACCOUNTS = ("root", "mariadb.sys", "mysql.sys", "mysql.session", "mysql.infoschema", "")
# A GRANT line of the accounts dump that also sets a password: loaded as is, it would give an account that exists
# on the target (root, whose password the restore itself logs in with) the source's password.
GRANT_PASSWORD = re.compile(
    rb" IDENTIFIED (BY PASSWORD '[^']*'|(VIA|WITH) [^ ;]+( (USING|AS) '[^']*')?( OR [^ ;]+( (USING|AS) '[^']*')?)*)"
)


def grants_without_passwords(source: t.Callable[[], bytes]) -> t.Callable[[], bytes]:
    """A reader of an accounts dump whose GRANT lines set no password: accounts the target lacks are created with
    the source's password (their CREATE USER IF NOT EXISTS line); those it has keep theirs, and get the grants."""
    return by_line(source, lambda line: GRANT_PASSWORD.sub(b"", line) if line.startswith(b"GRANT ") else line)


# How mysqldump starts the definition of a trigger, view, event or routine (at the start of a line).
OBJECT_MARKERS = (b"\n/*!50003 CREATE*/", b"\n/*!50001 CREATE", b"\n/*!50106 CREATE*/", b"\nCREATE DEFINER=")


def has_objects(path: str, settings: t.Any, encrypted: bool) -> bool:
    """Whether the dump at path defines a trigger, view, event or routine (one decode pass)."""
    proc, source = decompressor(path, settings, encrypted)
    found, carry = False, b""
    for block in iter(source, b""):
        data = carry + block
        if not found and any(marker in data for marker in OBJECT_MARKERS):
            found = True
        carry = data[-32:]
    proc.wait()
    return found


class MariaDBEngine(SqlEngine):
    min_bytes = 512
    drill_password_env = "MARIADB_ROOT_PASSWORD"
    drill_checksums = True

    def credentials(
        self, container: str | None = None, info: dict[str, t.Any] | None = None
    ) -> tuple[str, dict[str, str]]:
        env = container_env(info or self.container_info(container))
        user = self.spec.user or "root"
        password = self.spec.password or (
            first_set(env, "MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD")
            if user == "root"
            else first_set(env, "MARIADB_PASSWORD", "MYSQL_PASSWORD")
        )
        return user, ({"MYSQL_PWD": password} if password else {})

    def dump_tool(self, container: str) -> str:
        return self.tool(container, ("mariadb-dump", "mysqldump"))

    def client_tool(self, container: str) -> str:
        return self.tool(container, ("mariadb", "mysql"))

    def query_argv(self, container: str, user: str, query: str, database: str) -> list[str]:
        return [self.client_tool(container), "-u", user, "-N", "-B", "-e", query] + ([database] if database else [])

    def list_databases(self, container: str) -> list[str]:
        return sorted(r[0] for r in self.sql(container, "SHOW DATABASES") if r[0] not in SYSTEM_DATABASES)

    def table_counts(
        self,
        container: str,
        database: str,
        env: dict[str, str] | None = None,
        user: str | None = None,
        code: int = EXIT_DUMP,
    ) -> dict[str, int]:
        tables = [
            r[0]
            for r in self.sql(
                container,
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_type = 'BASE TABLE' ORDER BY 1",
                database,
                env,
                user,
                code,
            )
        ]
        if not tables:
            return {}
        query = " UNION ALL ".join(
            "SELECT '%s', COUNT(*) FROM `%s`" % (n.replace("'", "''"), n.replace("`", "``")) for n in tables
        )
        return {r[0]: int(r[1]) for r in self.sql(container, query, database, env, user, code)}

    def table_checksums(
        self,
        container: str,
        database: str,
        tables: t.Iterable[str],
        env: dict[str, str] | None = None,
        user: str | None = None,
        code: int = EXIT_DUMP,
    ) -> dict[str, str]:
        names = list(tables)
        if not names:
            return {}
        query = "CHECKSUM TABLE " + ", ".join("`%s`" % n.replace("`", "``") for n in names)
        return {r[0].split(".", 1)[-1]: r[1] for r in self.sql(container, query, database, env, user, code)}

    def dump(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        info = self.container_info()
        facts = self.image_facts(info)
        user, env = self.credentials(info=info)
        c = self.spec.container
        tool = self.dump_tool(c)
        artifacts = []
        for db in self.databases(c):
            t0 = time.monotonic()
            if self.spec.source_counts:
                counts = self.table_counts(c, db, env, user)
                facts.setdefault("tables", {})[db] = counts
                if self.spec.source_checksums:
                    facts.setdefault("checksums", {})[db] = self.table_checksums(c, db, counts, env, user)
            facts["facts_s"] = round(facts.get("facts_s", 0) + time.monotonic() - t0, 3)
            argv = [
                tool,
                "-u",
                user,
                "--single-transaction",
                "--routines",
                "--events",
                "--triggers",
                "--hex-blob",
                "--add-drop-database",
                "--databases",
                db,
            ]
            artifacts.append(self.dump_exec(directory, Artifact("%s.sql.zst" % db, "sql", database=db), c, argv, env))
        if tool == "mariadb-dump":
            # Last (a table's grant needs its table): users, their grants and roles. Without them a restore onto a
            # new server has the tables and no account the application can log in with. MySQL's mysqldump has no
            # --system (noted in the facts).
            facts["accounts"] = self.accounts(c, env, user)
            argv = [tool, "-u", user, "--system=users", "--insert-ignore"]
            artifacts.append(self.dump_exec(directory, Artifact(ACCOUNTS, "mysql_accounts"), c, argv, env))
        else:
            facts["accounts_skipped"] = (
                "%s has no --system=users (MySQL): accounts and grants are not in the backup" % tool
            )
        return artifacts, facts

    def accounts(self, container: str, env: dict[str, str], user: str, code: int = EXIT_DUMP) -> list[str]:
        """The server's own accounts (users, not roles) other than those every server has: 'user'@'host'."""
        rows = self.sql(
            container, "SELECT user, host FROM mysql.user WHERE is_role = 'N' ORDER BY 1, 2", "", env, user, code
        )
        return ["'%s'@'%s'" % (r[0], r[1]) for r in rows if r[0] not in SERVER_ACCOUNTS]

    def restore_artifact(
        self, directory: str, art: Artifact, container: str, env: dict[str, str], user: str, code: int = EXIT_RESTORE
    ) -> None:
        if art.kind not in ("sql", "mysql_accounts"):
            raise BackupError(code, "artifact kind %s is not a MariaDB/MySQL dump" % art.kind)
        argv = [self.client_tool(container), "-u", user, "--binary-mode"]
        path = os.path.join(directory, art.name)
        if art.kind == "sql":
            self.feed(container, path, argv, env, code, art.encrypted)
            return
        # Every statement is tried (--force); only a grant on a table this server does not have (a database not
        # restored here) may fail, anything else fails the restore.
        try:
            self.feed(container, path, argv + ["--force"], env, code, art.encrypted, grants_without_passwords)
        except BackupError as exc:
            failed = set(re.findall(r"ERROR (\d+)", str(exc.evidence.get("stderr", ""))))
            if not failed or failed - {"1146"}:
                raise

    def restore(self, directory: str, manifest: Manifest, databases: list[str] | None = None) -> list[str]:
        user, env = self.credentials()
        c = self.spec.container
        selected = [a for a in manifest.artifacts if not a.database or not databases or a.database in databases]
        dumps = [a for a in selected if a.kind == "sql"]
        self.progress("copying")
        loaded: list[Artifact] = []
        in_place: list[Artifact] = []
        try:
            for art in dumps:
                self.settle(c, art.database, env, user)
                if has_objects(os.path.join(directory, art.name), self.settings, art.encrypted):
                    in_place.append(art)
                    continue
                self.load_beside(directory, art, c, env, user)
                loaded.append(art)
        except BaseException:
            for art in dumps:  # the loaded ones and the one that failed: the live databases are untouched
                self.q(c, "DROP DATABASE IF EXISTS %s" % ident(scratch_name(art.database)), env, user)
            raise
        self.progress("swapping")
        for art in dumps:
            if art in in_place:
                self.restore_artifact(directory, art, c, env, user)
            else:
                self.swap(directory, art, c, env, user)
            self.progress("swapping", done=art.name)
        # The accounts after the tables (a table's grant needs its table): those the server lacks are added and
        # grants given (GRANT adds); nothing is dropped.
        for art in selected:
            if art not in dumps:
                self.restore_artifact(directory, art, c, env, user)
                self.progress("swapping", done=art.name)
        return [a.name for a in selected]

    def q(self, c: str, query: str, env: dict[str, str], user: str) -> list[list[str]]:
        return self.sql(c, query, "", env, user, EXIT_RESTORE)

    def settle(self, c: str, db: str, env: dict[str, str], user: str) -> None:
        """Leftovers of a killed restore: the scratch schema (half loaded) and the old one (RENAME TABLE is
        atomic: the old schema is empty, or the swap happened and only its drop was left)."""
        for name in (scratch_name(db), old_name(db)):
            self.q(c, "DROP DATABASE IF EXISTS %s" % ident(name), env, user)

    def load_beside(self, directory: str, art: Artifact, c: str, env: dict[str, str], user: str) -> None:
        if art.kind != "sql":
            raise BackupError(EXIT_RESTORE, "artifact kind %s is not a MariaDB/MySQL dump" % art.kind)
        argv = [self.client_tool(c), "-u", user, "--binary-mode"]
        scratch = scratch_name(art.database)
        self.feed(
            c,
            os.path.join(directory, art.name),
            argv,
            env,
            EXIT_RESTORE,
            art.encrypted,
            lambda source: renaming(source, art.database, scratch),
        )

    def swap(self, directory: str, art: Artifact, c: str, env: dict[str, str], user: str) -> None:
        db, scratch, old = art.database, scratch_name(art.database), old_name(art.database)
        names = ", ".join(literal(n) for n in (db, scratch))
        count = self.q(
            c,
            "SELECT (SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s), "
            "(SELECT COUNT(*) FROM information_schema.views WHERE table_schema IN (%s)) + "
            "(SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema IN (%s)) + "
            "(SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema IN (%s)) + "
            "(SELECT COUNT(*) FROM information_schema.events WHERE event_schema IN (%s))"
            % (literal(db), names, names, names, names),
            env,
            user,
        )
        exists, others = (int(v) for v in count[0])
        if not exists or others:
            self.restore_artifact(directory, art, c, env, user)  # proven by the scratch load
            self.q(c, "DROP DATABASE IF EXISTS %s" % ident(scratch), env, user)
            return
        tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
        live = [r[0] for r in self.q(c, tables % literal(db), env, user)]
        new = [r[0] for r in self.q(c, tables % literal(scratch), env, user)]
        self.q(c, "CREATE DATABASE %s" % ident(old), env, user)
        moves = ["%s.%s TO %s.%s" % (ident(db), ident(n), ident(old), ident(n)) for n in live]
        moves += ["%s.%s TO %s.%s" % (ident(scratch), ident(n), ident(db), ident(n)) for n in new]
        if moves:
            self.q(c, "RENAME TABLE " + ", ".join(moves), env, user)
        for name in (old, scratch):
            self.q(c, "DROP DATABASE IF EXISTS %s" % ident(name), env, user)

    def restore_steps(self, manifest: Manifest) -> list[str]:
        return [
            "add the accounts of %s the server lacks and their grants (no account dropped, no password changed)"
            % a.name
            if a.kind == "mysql_accounts"
            else "load %s into a scratch schema %s, then (all loaded) swap its tables into %s by RENAME TABLE "
            "(a dump or database with views, routines, triggers or events: reload %s from the decoded dump)"
            % (a.name, scratch_name(a.database), a.database, a.database)
            for a in manifest.artifacts
        ]

    def drill_checks(self, cid: str, directory: str, manifest: Manifest) -> dict[str, t.Any]:
        result = super().drill_checks(cid, directory, manifest)
        expected = manifest.facts.get("accounts")
        if expected is not None:
            user, denv = self.credentials(self.spec.container)
            present = self.accounts(self.spec.container, denv, user, EXIT_DRILL)
            missing = sorted(set(expected) - set(present))
            result["accounts"] = len(expected) - len(missing)
            if missing:
                result["matches_source"] = False
                result["mismatches"] = sorted(result["mismatches"] + ["account %s" % a for a in missing])
        return result

    def ready_argv(self, container: str, user: str) -> list[str]:
        tool = self.tool(container, ("mariadb-admin", "mysqladmin"))
        return [tool, "-u", user or "root", "-h", "127.0.0.1", "--protocol=tcp", "ping"]
