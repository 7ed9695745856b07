# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Running a program: argv only (never a shell), output captured, a timeout, and a result that says why.

Private to this collection: not a public API, it may change in any release.

Every external command the module_utils start (``nginx -t``, ``systemctl reload``, ``docker compose``) goes
through ``run_command``; callers that must keep a lock held in the child pass its descriptor in ``pass_fds``.
Standard library only.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import subprocess
import typing as t
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 60.0
RC_NOT_FOUND = 127
RC_TIMEOUT = 124


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return "\n".join(part for part in (self.stdout.strip(), self.stderr.strip()) if part)

    @property
    def ok(self) -> bool:
        return self.rc == 0


Runner = t.Callable[[t.Sequence[str]], CommandResult]


def run_command(
    argv: t.Sequence[str],
    timeout: float = DEFAULT_TIMEOUT_S,
    pass_fds: t.Sequence[int] = (),
    env: dict[str, str] | None = None,
) -> CommandResult:
    """Run argv without a shell; a missing binary or a timeout becomes rc 127 / 124 with the reason."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, pass_fds=tuple(pass_fds), env=env
        )
    except FileNotFoundError as exc:
        return CommandResult(tuple(argv), RC_NOT_FOUND, "", "%s: %s" % (argv[0], exc.strerror))
    except subprocess.TimeoutExpired:
        return CommandResult(tuple(argv), RC_TIMEOUT, "", "%s did not finish within %g s" % (" ".join(argv), timeout))
    return CommandResult(tuple(argv), proc.returncode, proc.stdout or "", proc.stderr or "")


def pid_alive(pid: t.Any) -> bool:
    """Whether a process with this id exists (signal 0; another user's process counts as alive)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["DEFAULT_TIMEOUT_S", "RC_NOT_FOUND", "RC_TIMEOUT", "CommandResult", "Runner", "pid_alive", "run_command"]
