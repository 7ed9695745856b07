# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The ``docker compose`` command line of a rolling upgrade: the argv, running it, reading ``compose config``.

Private to this collection: not a public API, it may change in any release.

Commands run through module_utils/_process.py (argv, no shell). While a run holds the project's lock, the lock's
descriptor is passed to compose (``pass_fds``): if the run is killed, compose keeps the lock until it is done, so
the next run cannot interleave with it (module_utils/_project_lock.py).
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._compose import project_compose_files
from ansible_collections.opsbook.stack.plugins.module_utils._process import (
    RC_NOT_FOUND,
    RC_TIMEOUT,
    CommandResult,
    run_command,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import ComposeService, UpgradeError

LABEL_ROLE = "io.opsbook.role"
LABEL_PORT = "io.opsbook.port"
COMPOSE_TIMEOUT_S = 600.0
CONFIG_TIMEOUT_S = 60.0


def parse_services(data: dict[str, t.Any]) -> dict[str, ComposeService]:
    """The services of `docker compose config --format json`, with the role and port from their labels."""
    out = {}
    for name, svc in (data.get("services") or {}).items():
        labels = svc.get("labels") or {}
        if isinstance(labels, list):
            labels = dict(item.split("=", 1) for item in labels if "=" in item)
        port = labels.get(LABEL_PORT)
        role = labels.get(LABEL_ROLE) or ("web" if port else "worker")
        replicas = (svc.get("deploy") or {}).get("replicas")
        if replicas is None:
            replicas = svc.get("scale", 1)
        health = svc.get("healthcheck") or {}
        out[name] = ComposeService(
            name=name,
            image=svc.get("image", ""),
            replicas=int(replicas or 1),
            role=role,
            port=int(port) if port else None,
            has_healthcheck=bool(health) and not health.get("disable"),
        )
    return out


def tail(result: CommandResult, limit: int = 1500) -> str:
    """The end of what a failed command said, for the error message."""
    return (result.stderr or result.stdout).strip()[-limit:]


class ComposeCli:
    """`docker compose` for one project; `lock_fd` is handed to every command while a run holds the lock."""

    def __init__(self, project: str, project_dir: str, compose_file: str):
        self.project = project
        self.project_dir = project_dir
        self.compose_file = compose_file
        # An adopted project: the operator's files come first, the collection's override (compose_file) last.
        self.base_files = project_compose_files(project_dir, compose_file)[:-1]
        self.lock_fd: int | None = None

    def argv(self, *args: str, compose_file: str | None = None) -> list[str]:
        """compose_file: a candidate in place of the edited file (the operator's files stay in front of it)."""
        files = [*self.base_files, compose_file or self.compose_file]
        return [
            "docker",
            "compose",
            "--project-name",
            self.project,
            "--project-directory",
            self.project_dir,
            *[arg for path in files for arg in ("--file", path)],
            *args,
        ]

    def run(self, *args: str, compose_file: str | None = None, timeout: float = COMPOSE_TIMEOUT_S) -> CommandResult:
        argv = self.argv(*args, compose_file=compose_file)
        fds = (self.lock_fd,) if self.lock_fd is not None else ()
        result = run_command(argv, timeout=timeout, pass_fds=fds)
        if result.rc == RC_NOT_FOUND and not result.stdout:
            raise UpgradeError("docker compose is not installed on this host (%s)" % result.stderr)
        if result.rc == RC_TIMEOUT and not result.stdout and result.stderr.endswith("within %g s" % timeout):
            raise UpgradeError("`%s` did not finish within %g s" % (" ".join(argv), timeout))
        return result

    def config(self, compose_file: str | None = None) -> dict[str, ComposeService]:
        """The services of the compose file (or of a candidate file beside it), as Compose reads them."""
        done = self.run(
            "config", "--no-interpolate", "--format", "json", compose_file=compose_file, timeout=CONFIG_TIMEOUT_S
        )
        if not done.ok:
            raise UpgradeError(
                "docker compose config failed for %s: %s" % (compose_file or self.compose_file, tail(done))
            )
        return parse_services(json.loads(done.stdout))

    def up(self, service: str, *flags: str) -> CommandResult:
        return self.run("up", "--detach", "--no-deps", *flags, service)


__all__ = ["COMPOSE_TIMEOUT_S", "CONFIG_TIMEOUT_S", "LABEL_PORT", "LABEL_ROLE", "ComposeCli", "parse_services", "tail"]
