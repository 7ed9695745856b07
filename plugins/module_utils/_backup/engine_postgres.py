# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""PostgreSQL: pg_dumpall -g (roles, tablespaces) and pg_dump -Fc per database, restored by psql and pg_restore.

Private to this collection: not a public API, it may change in any release.
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
            ident = '"%s"' % art.database.replace('"', '""')
            self.sql(container, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % ident, "postgres", env, user, code)
            argv = ["pg_restore", "-U", user, "--exit-on-error", "--create", "-d", "postgres"]
            self.feed(container, path, argv, env, code, art.encrypted)
        else:
            raise BackupError(code, "artifact kind %s is not a PostgreSQL dump" % art.kind)

    def restore_steps(self, manifest: Manifest) -> list[str]:
        steps = []
        for a in manifest.artifacts:
            if a.kind == "pg_custom":
                steps.append("DROP DATABASE %s WITH (FORCE), pg_restore --create from %s" % (a.database, a.name))
            else:
                steps.append("apply roles and tablespaces from %s" % a.name)
        return steps

    def ready_argv(self, container: str, user: str) -> list[str]:
        return ["pg_isready", "-h", "127.0.0.1", "-U", user or "postgres"]
