# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What the SQL engines (MariaDB/MySQL, PostgreSQL) share: queries through the server's own client, databases,
table counts recorded at backup time, the restore loop and the drill that compares the counts.

Private to this collection: not a public API, it may change in any release.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.base import Engine
from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    EXIT_DRILL,
    EXIT_DUMP,
    EXIT_RESTORE,
    BackupError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.store import Artifact, Manifest


class SqlEngine(Engine):
    """A database server with databases and tables; subclasses give the client's argv and the catalog queries."""

    drillable = True
    # The drill also compares CHECKSUM TABLE (when the source recorded them).
    drill_checksums: t.ClassVar[bool] = False

    def query_argv(self, container: str, user: str, query: str, database: str) -> list[str]:
        raise NotImplementedError

    def list_databases(self, container: str) -> list[str]:
        raise NotImplementedError

    def table_counts(
        self,
        container: str,
        database: str,
        env: dict[str, str] | None = None,
        user: str | None = None,
        code: int = EXIT_DUMP,
    ) -> dict[str, int]:
        raise NotImplementedError

    def table_checksums(
        self,
        container: str,
        database: str,
        tables: t.Iterable[str],
        env: dict[str, str] | None = None,
        user: str | None = None,
        code: int = EXIT_DUMP,
    ) -> dict[str, str]:
        return {}

    def restore_artifact(
        self, directory: str, art: Artifact, container: str, env: dict[str, str], user: str, code: int = EXIT_RESTORE
    ) -> None:
        raise NotImplementedError

    def sql(
        self,
        container: str,
        query: str,
        database: str = "",
        env: dict[str, str] | None = None,
        user: str | None = None,
        code: int = EXIT_DUMP,
    ) -> list[list[str]]:
        """Rows of a query, through the database's own client in the container."""
        if user is None or env is None:
            user, env = self.credentials(container)
        argv = self.query_argv(container, user, query, database)
        out = self.check(self.run(container, argv, env=env), "query %r" % query[:80], code, container)
        return [line.split("\t") for line in out.splitlines() if line]

    def databases(self, container: str) -> list[str]:
        if self.spec.databases:
            return list(self.spec.databases)
        return self.list_databases(container)

    def restore(self, directory: str, manifest: Manifest, databases: list[str] | None = None) -> list[str]:
        user, env = self.credentials()
        restored = []
        for art in manifest.artifacts:
            if databases and art.database and art.database not in databases:  # server-wide ones always
                continue
            self.restore_artifact(directory, art, self.spec.container, env, user)
            restored.append(art.name)
        return restored

    def drill_checks(self, cid: str, directory: str, manifest: Manifest) -> dict[str, t.Any]:
        name = self.spec.container
        self.client.start_container(cid)
        self.wait_ready(name, self.settings.drill_timeout, EXIT_DRILL)
        user, denv = self.credentials(name)
        tables: dict[str, t.Any] = {}
        mismatches = []
        for art in manifest.artifacts:
            self.restore_artifact(directory, art, name, denv, user, EXIT_DRILL)
            if not art.database:
                continue
            counts = self.table_counts(name, art.database, denv, user, EXIT_DRILL)
            expected = (manifest.facts.get("tables") or {}).get(art.database, {})
            missing = sorted(set(expected) - set(counts))
            if missing:
                raise BackupError(
                    EXIT_DRILL,
                    "drill of %s: tables missing after restore in %s: %s"
                    % (manifest.id, art.database, ", ".join(missing)),
                )
            entry: dict[str, t.Any] = {"counts": counts}
            if self.drill_checksums:
                entry["checksums"] = self.table_checksums(name, art.database, counts, denv, user, EXIT_DRILL)
                src = (manifest.facts.get("checksums") or {}).get(art.database, {})
                mismatches += [
                    "%s.%s" % (art.database, k) for k, v in entry["checksums"].items() if k in src and src[k] != v
                ]
            if expected:
                mismatches += ["%s.%s" % (art.database, k) for k, v in counts.items() if expected.get(k) != v]
            tables[art.database] = entry
        # Counts are taken before the (transactionally consistent) dump starts: on a busy database they may
        # differ by the writes in between, so a difference is reported, not failed.
        return {"tables": tables, "matches_source": not mismatches, "mismatches": sorted(set(mismatches))}
