# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""MariaDB and MySQL: mariadb-dump (or mysqldump) per database, restored through the mariadb (mysql) client.

Private to this collection: not a public API, it may change in any release.

Row counts (and, opted in, CHECKSUM TABLE) of every table go into the manifest before the dump; the drill
restores into a throwaway server and compares them.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import time
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import container_env, first_set
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import EXIT_DUMP, EXIT_RESTORE, BackupError
from ansible_collections.opsbook.stack.plugins.module_utils._backup.sql import SqlEngine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest

SYSTEM_DATABASES = ("information_schema", "performance_schema", "sys", "mysql")


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
        return artifacts, facts

    def restore_artifact(
        self, directory: str, art: Artifact, container: str, env: dict[str, str], user: str, code: int = EXIT_RESTORE
    ) -> None:
        if art.kind != "sql":
            raise BackupError(code, "artifact kind %s is not a MariaDB/MySQL dump" % art.kind)
        argv = [self.client_tool(container), "-u", user, "--binary-mode"]
        self.feed(container, os.path.join(directory, art.name), argv, env, code, art.encrypted)

    def restore_steps(self, manifest: Manifest) -> list[str]:
        return ["drop and recreate database %s from %s" % (a.database, a.name) for a in manifest.artifacts]

    def ready_argv(self, container: str, user: str) -> list[str]:
        tool = self.tool(container, ("mariadb-admin", "mysqladmin"))
        return [tool, "-u", user or "root", "-h", "127.0.0.1", "--protocol=tcp", "ping"]
