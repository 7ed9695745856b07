# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""PostgreSQL: pg_dumpall -g (roles, tablespaces) and pg_dump -Fc per database, restored by psql and pg_restore.

Private to this collection: not a public API, it may change in any release.

A restore loads every database into a new one beside it (``<db>__opsbook_new``, same owner, encoding and locale),
and only once all of them loaded swaps each in one transaction (``<db>`` -> ``<db>__opsbook_old``, the new one ->
``<db>``), then drops the old one: a restore that fails before the swap leaves every database as it was. Leftovers
of a killed restore are settled first (``settle``). Database-level settings (``ALTER DATABASE ... SET``, database
GRANTs) are not in a ``pg_dump`` without ``--create``: the new database gets the owner of the one it replaces.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import container_env
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import EXIT_DUMP, EXIT_RESTORE, BackupError
from ansible_collections.opsbook.stack.plugins.module_utils._backup.sql import SqlEngine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest

# Exact counts of every user table, in one query: count(*) per table through query_to_xml.
COUNTS_QUERY = (
    "SELECT table_schema || '.' || table_name, (xpath('/row/c/text()', query_to_xml(format("
    "'SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text "
    "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
    "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
)


def ident(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


def literal(value: str) -> str:
    return "'%s'" % value.replace("'", "''")


def scratch_name(db: str) -> str:
    """The new copy beside db while it loads (identifiers hold 63 bytes)."""
    return db.encode()[:49].decode(errors="ignore") + "__opsbook_new"


def old_name(db: str) -> str:
    return db.encode()[:49].decode(errors="ignore") + "__opsbook_old"


class PostgresEngine(SqlEngine):
    min_bytes = 64
    drill_password_env = "POSTGRES_PASSWORD"

    def credentials(
        self, container: str | None = None, info: dict[str, t.Any] | None = None
    ) -> tuple[str, dict[str, str]]:
        env = container_env(info or self.container_info(container))
        user = self.spec.user or env.get("POSTGRES_USER") or "postgres"
        password = self.spec.password or env.get("POSTGRES_PASSWORD", "")
        return user, ({"PGPASSWORD": password} if password else {})

    def query_argv(self, container: str, user: str, query: str, database: str) -> list[str]:
        return ["psql", "-U", user, "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", query] + [
            "-d",
            database or "postgres",
        ]

    def list_databases(self, container: str) -> list[str]:
        rows = self.sql(
            container,
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
            "AND datname <> 'postgres' ORDER BY 1",
        )
        return [r[0] for r in rows]

    def table_counts(
        self,
        container: str,
        database: str,
        env: dict[str, str] | None = None,
        user: str | None = None,
        code: int = EXIT_DUMP,
    ) -> dict[str, int]:
        return {r[0]: int(r[1]) for r in self.sql(container, COUNTS_QUERY, database, env, user, code)}

    def dump(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        info = self.container_info()
        facts = self.image_facts(info)
        user, env = self.credentials(info=info)
        c = self.spec.container
        globals_argv = ["pg_dumpall", "-U", user, "-g"]
        artifacts = [self.dump_exec(directory, Artifact("globals.sql.zst", "pg_globals"), c, globals_argv, env)]
        for db in self.databases(c):
            t0 = time.monotonic()
            if self.spec.source_counts:
                facts.setdefault("tables", {})[db] = self.table_counts(c, db, env, user)
            facts["facts_s"] = round(facts.get("facts_s", 0) + time.monotonic() - t0, 3)
            # -Z0: zstd compresses better and faster than pg_dump's built-in zlib
            argv = ["pg_dump", "-U", user, "-Fc", "-Z0", "-d", db]
            art = Artifact("%s.pgdump.zst" % db, "pg_custom", database=db)
            artifacts.append(self.dump_exec(directory, art, c, argv, env))
        return artifacts, facts

    def restore_artifact(
        self, directory: str, art: Artifact, container: str, env: dict[str, str], user: str, code: int = EXIT_RESTORE
    ) -> None:
        path = os.path.join(directory, art.name)
        if art.kind == "pg_globals":
            # Roles that exist already fail harmlessly; everything else must apply.
            argv = ["psql", "-U", user, "-X", "-q", "-d", "postgres"]
            res = self.feed(container, path, argv, env, code, art.encrypted)
            if res.stderr and b"already exists" not in res.stderr:
                raise BackupError(code, "globals in %s: %s" % (container, res.stderr.decode(errors="replace")[-2000:]))
        elif art.kind == "pg_custom":
            # Drills (a throwaway server) only: a live restore loads beside and swaps (restore).
            self.sql(
                container, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % ident(art.database), "postgres", env, user, code
            )
            argv = ["pg_restore", "-U", user, "--exit-on-error", "--create", "-d", "postgres"]
            self.feed(container, path, argv, env, code, art.encrypted)
        else:
            raise BackupError(code, "artifact kind %s is not a PostgreSQL dump" % art.kind)

    def restore(self, directory: str, manifest: Manifest, databases: list[str] | None = None) -> list[str]:
        user, env = self.credentials()
        c = self.spec.container
        selected = [a for a in manifest.artifacts if a.kind == "pg_globals" or not databases or a.database in databases]
        self.progress("copying")
        loaded = []
        try:
            for art in selected:
                if art.kind == "pg_globals":
                    self.restore_artifact(directory, art, c, env, user)  # roles: they exist already or are added
                    continue
                self.settle(c, art.database, env, user)
                self.load_beside(directory, art, c, env, user)
                loaded.append(art)
        except BaseException:
            for art in selected:  # the loaded ones and the one that failed: the live databases are untouched
                if art.kind == "pg_custom":
                    self.drop(c, scratch_name(art.database), env, user)
            raise
        self.progress("swapping")
        for art in loaded:
            self.swap(c, art.database, env, user)
            self.progress("swapping", done=art.name)
        return [a.name for a in selected]

    def q(self, c: str, query: str, env: dict[str, str], user: str) -> list[list[str]]:
        return self.sql(c, query, "postgres", env, user, EXIT_RESTORE)

    def exists(self, c: str, name: str, env: dict[str, str], user: str) -> bool:
        return bool(self.q(c, "SELECT 1 FROM pg_database WHERE datname = %s" % literal(name), env, user))

    def drop(self, c: str, name: str, env: dict[str, str], user: str) -> None:
        self.q(c, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % ident(name), env, user)

    def settle(self, c: str, db: str, env: dict[str, str], user: str) -> None:
        """Leftovers of a killed restore of db: a swap that renamed db away and not back cannot happen (one
        transaction), so an old copy beside db is dropped; a half loaded new copy is dropped too."""
        old = old_name(db)
        if self.exists(c, old, env, user):
            if self.exists(c, db, env, user):
                self.drop(c, old, env, user)
            else:
                self.q(c, "ALTER DATABASE %s RENAME TO %s" % (ident(old), ident(db)), env, user)
        self.drop(c, scratch_name(db), env, user)

    def load_beside(self, directory: str, art: Artifact, c: str, env: dict[str, str], user: str) -> None:
        """pg_restore into <db>__opsbook_new, created like db (owner, encoding, locale) when db exists."""
        scratch = scratch_name(art.database)
        rows = self.q(
            c,
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
            "WHERE datname = %s" % literal(art.database),
            env,
            user,
        )
        create = "CREATE DATABASE %s TEMPLATE template0" % ident(scratch)
        if rows and len(rows[0]) == 4:
            owner, encoding, collate, ctype = rows[0]
            create += " OWNER %s ENCODING %s LC_COLLATE %s LC_CTYPE %s" % (
                ident(owner),
                literal(encoding),
                literal(collate),
                literal(ctype),
            )
        self.q(c, create, env, user)
        argv = ["pg_restore", "-U", user, "--exit-on-error", "-d", scratch]
        self.feed(c, os.path.join(directory, art.name), argv, env, EXIT_RESTORE, art.encrypted)

    def swap(self, c: str, db: str, env: dict[str, str], user: str) -> None:
        """In one transaction: end db's sessions, db -> <db>__opsbook_old, the new copy -> db; then drop the old."""
        old, scratch = old_name(db), scratch_name(db)
        had = self.exists(c, db, env, user)
        parts = []
        if had:
            parts = [
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()" % literal(db),
                "ALTER DATABASE %s RENAME TO %s" % (ident(db), ident(old)),
            ]
        parts.append("ALTER DATABASE %s RENAME TO %s" % (ident(scratch), ident(db)))
        query = "BEGIN; %s; COMMIT" % "; ".join(parts)
        for attempt in range(10):
            try:
                self.q(c, query, env, user)
                break
            except BackupError as exc:  # a client reconnected between the terminate and the rename
                if "being accessed by other users" not in exc.message or attempt == 9:
                    raise
                time.sleep(0.5)
        if had:
            self.drop(c, old, env, user)

    def restore_steps(self, manifest: Manifest) -> list[str]:
        steps = []
        for a in manifest.artifacts:
            if a.kind == "pg_custom":
                steps.append(
                    "pg_restore %s into a new database %s, then (all loaded) swap it with %s in one transaction "
                    "and drop the old one" % (a.name, scratch_name(a.database), a.database)
                )
            else:
                steps.append("apply roles and tablespaces from %s" % a.name)
        return steps

    def ready_argv(self, container: str, user: str) -> list[str]:
        return ["pg_isready", "-h", "127.0.0.1", "-U", user or "postgres"]
