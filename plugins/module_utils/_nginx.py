# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one Nginx activation: stage, ``nginx -t``, go live, test again, reload; put the previous files back.

Private to this collection: not a public API, it may change in any release.

Every writer of Nginx configuration on a host goes through ``activate_files``: the nginx role and the
monitoring role (module ``nginx_config``), ``nginx_upstream``, and the upgrade and rollback modules (through
``_upstream.sync_upstream`` and ``_upstream.activate``). One call, under one lock (``DEFAULT_LOCK_PATH``):

1. read what each file holds now; unchanged content means nothing is written, tested or reloaded;
2. with ``test_copy``: copy the configuration tree into a scratch directory, lay the new files over the copy
   and run ``nginx -t`` on it, so a rejected file never goes live (the files must lie inside the tree);
3. write each file atomically (``_files.write_atomic``), run ``nginx -t`` on the live tree (another writer
   outside the lock, or an absolute include, can still make it fail), then reload gracefully;
4. on any failure from step 3 on (a rejected test, a failed reload, an exception, SIGTERM/SIGHUP/SIGINT) the
   previous files (or their absence) are put back; after a failed reload the tree is tested and reloaded
   again so Nginx runs what is on disk.

Standard library only. See docs/architecture.md for where the files live and who writes them.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import typing as t
from dataclasses import dataclass, field

from ansible_collections.opsbook.stack.plugins.module_utils._files import (
    LockHeld,
    flock,
    restore_file,
    write_atomic,
)
from ansible_collections.opsbook.stack.plugins.module_utils._process import (
    CommandResult,
    Runner,
    pid_alive,
    run_command,
)

DEFAULT_NGINX_BINARY = "nginx"
DEFAULT_NGINX_UNIT = "nginx"
DEFAULT_NGINX_CONF = "/etc/nginx/nginx.conf"
DEFAULT_PID_FILE = "/run/nginx.pid"
# One lock for every writer of Nginx configuration on a host (the roles, nginx_upstream, the upgrade modules):
# `nginx -t` checks the whole configuration, so two writers at once could each test the other's half-done change.
DEFAULT_LOCK_PATH = "/run/lock/opsbook-nginx.lock"
# How long a writer waits for another one (an upgrade switching upstreams) before it fails naming it.
DEFAULT_LOCK_WAIT_S = 300.0
DEFAULT_MODE = 0o644
# Severity words nginx puts in brackets; the first such line is the one a person needs to read.
_NGINX_ERROR_RE = re.compile(r"\[(emerg|alert|crit|error)\]")
_ERROR_WHERE_RE = re.compile(r" in (\S+):([0-9]+)")
# Signals that would otherwise kill the process between "live" and "tested": they raise instead, so the
# previous files go back. (SIGKILL cannot be caught: with test_copy the file was tested before going live.)
_CAUGHT_SIGNALS = ("SIGTERM", "SIGHUP", "SIGINT")


class NginxError(Exception):
    """Base class; ``evidence`` holds what a person on call needs to act (paths, nginx output, the holder)."""

    def __init__(self, message: str, evidence: dict[str, t.Any] | None = None):
        super().__init__(message)
        self.evidence = evidence or {}


class NginxConfigRejected(NginxError):
    """`nginx -t` failed with the new files; nothing live changed, or the previous files were put back."""

    def __init__(self, message: str, nginx_error: str, evidence: dict[str, t.Any] | None = None):
        super().__init__(message, evidence)
        self.nginx_error = nginx_error


class NginxReloadFailed(NginxError):
    """The configuration passed `nginx -t` but the reload command failed; the previous files were put back."""


class NginxBusy(NginxError):
    """Another writer holds the Nginx configuration lock and did not let go in time."""


class Interrupted(BaseException):
    """A signal arrived while new files were live but not yet tested and reloaded."""


# --------------------------------------------------------------------------------------------------------
# Test and reload
# --------------------------------------------------------------------------------------------------------


@dataclass
class NginxControl:
    """How to test and reload the Nginx of this host. ``runner`` is replaceable for tests."""

    binary: str = DEFAULT_NGINX_BINARY
    # The main configuration file to test; None tests the one the binary was built with (/etc/nginx/nginx.conf).
    config: str | None = None
    # The reload command as argv. None: `systemctl reload nginx` under systemd, else `nginx -s reload`.
    reload_command: list[str] | None = None
    unit: str = DEFAULT_NGINX_UNIT
    pid_file: str = DEFAULT_PID_FILE
    runner: Runner = run_command
    systemd_dir: str = "/run/systemd/system"
    # nginx's -p (prefix path); None keeps the compiled one.
    prefix: str | None = None

    @property
    def config_path(self) -> str:
        return self.config or DEFAULT_NGINX_CONF

    def _base(self, config: str | None) -> list[str]:
        argv = [self.binary]
        if self.prefix:
            argv += ["-p", self.prefix]
        if config:
            argv += ["-c", config]
        return argv

    def test(self, config: str | None = None) -> CommandResult:
        """`nginx -t` of the live configuration, or of another main file (a scratch copy)."""
        base = self._base(config or self.config)
        return self.runner([base[0], "-t", *base[1:]])

    def _under_systemd(self) -> bool:
        return os.path.isdir(self.systemd_dir)

    def is_running(self) -> bool:
        """Whether there is a running nginx to reload (a stopped one reads the new file when it starts)."""
        if self.reload_command is None and self._under_systemd():
            return self.runner(["systemctl", "is-active", "--quiet", self.unit]).rc == 0
        try:
            with open(self.pid_file, encoding="ascii") as handle:
                pid = int(handle.read().strip() or "0")
        except (OSError, ValueError):
            return False
        return pid_alive(pid)

    def reload_argv(self) -> list[str]:
        if self.reload_command:
            return list(self.reload_command)
        if self._under_systemd():
            return ["systemctl", "reload", self.unit]
        return self._base(self.config) + ["-s", "reload"]

    def reload(self) -> CommandResult:
        return self.runner(self.reload_argv())


def nginx_error_line(output: str) -> str:
    """nginx's own words: the first [emerg]/[alert]/[crit]/[error] line, else the last line it printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if _NGINX_ERROR_RE.search(line):
            return line
    return lines[-1] if lines else "nginx -t failed without a message"


def error_location(line: str) -> tuple[str, int] | None:
    """(file, line number) that an nginx error line names, if it names one."""
    match = _ERROR_WHERE_RE.search(line)
    return (match.group(1), int(match.group(2))) if match else None


# --------------------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    """What one file should hold after the activation (content None: the file should not exist)."""

    path: str
    content: bytes | None
    mode: int = DEFAULT_MODE


@dataclass
class FileState:
    path: str
    content: bytes | None
    previous: bytes | None
    mode: int = DEFAULT_MODE

    @property
    def changed(self) -> bool:
        return self.content != self.previous


@dataclass
class Activation:
    """The outcome of activate_files: what changed, whether nginx reloaded, and why not."""

    files: list[FileState]
    changed: bool = False
    reloaded: bool = False
    reload_command: list[str] = field(default_factory=list)
    nginx_test: str = ""
    # Why nothing was reloaded although files changed (nginx not running, check mode, reload=false).
    note: str = ""

    @property
    def changed_paths(self) -> list[str]:
        return [f.path for f in self.files if f.changed]


@dataclass
class ActivationResult:
    """activate()'s outcome for its one file (the shape _upstream has always returned)."""

    path: str
    changed: bool
    content: str
    previous: str | None
    reloaded: bool = False
    reload_command: list[str] = field(default_factory=list)
    nginx_test: str = ""
    note: str = ""


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def config_lock(lock_path: str | None, operation: str, wait_s: float | None) -> t.Iterator[None]:
    """The host's Nginx configuration lock (no lock_path: none); NginxBusy names the holder after wait_s."""
    if not lock_path:
        yield
        return
    try:
        with flock(lock_path, operation, wait_s=wait_s):
            yield
    except LockHeld as exc:
        raise NginxBusy(
            "another writer of the Nginx configuration holds %s: %s. Wait for it to finish (or find it with "
            "`fuser %s`) and run again." % (lock_path, exc, lock_path),
            {"lock_path": lock_path, "holder": exc.holder},
        ) from exc


@contextlib.contextmanager
def signals_blocked() -> t.Iterator[None]:
    """Hold SIGTERM/SIGHUP/SIGINT back while the previous files are put back; they arrive afterwards."""
    numbers = {getattr(signal, name) for name in _CAUGHT_SIGNALS if hasattr(signal, name)}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def signals_raise() -> t.Iterator[None]:
    """While the block runs, SIGTERM/SIGHUP/SIGINT raise Interrupted (main thread only) instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: t.Any) -> None:
        raise Interrupted("signal %d while new Nginx files were live but not yet checked" % signum)

    saved: dict[int, t.Any] = {}
    for name in _CAUGHT_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            saved[number] = signal.signal(number, _raise)
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def _inside(path: str, root: str) -> bool:
    path, root = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, root]) == root and path != root


def check_in_copy(pending: t.Sequence[FileState], nginx: NginxControl, scratch_parent: str | None = None) -> str:
    """`nginx -t` on a scratch copy of the tree with the new files laid over it; nothing live is touched.

    Returns nginx's output; raises NginxConfigRejected (paths in nginx's words point at the live tree).
    """
    config = os.path.abspath(nginx.config_path)
    root = os.path.dirname(config)
    outside = [f.path for f in pending if not _inside(f.path, root)]
    if outside:
        raise NginxError(
            "not inside the configuration tree %s, so a copy of the tree cannot check them: %s. Keep the files "
            "under %s or turn test_copy off" % (root, ", ".join(outside), root),
            {"outside": outside, "config": config},
        )
    scratch = tempfile.mkdtemp(suffix="-nginx-check", dir=scratch_parent)
    try:
        shutil.copytree(root, scratch, symlinks=True, dirs_exist_ok=True)
        for state in pending:
            target = os.path.join(scratch, os.path.relpath(os.path.abspath(state.path), root))
            if state.content is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(state.content)
        done = nginx.test(os.path.join(scratch, os.path.basename(config)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    output = done.output.replace(scratch, root)
    if done.rc != 0:
        error = nginx_error_line(output)
        raise NginxConfigRejected(
            "nginx -t rejected the new configuration (checked in a copy of %s), so nothing live was changed: "
            "nginx keeps serving the last good one. nginx said: %s" % (root, error),
            error,
            _rejection_evidence(pending, output, error, "copy"),
        )
    return output


def _rejection_evidence(
    pending: t.Sequence[FileState], output: str, error: str, where: str, **extra: t.Any
) -> dict[str, t.Any]:
    evidence: dict[str, t.Any] = {
        "path": pending[0].path if len(pending) == 1 else [f.path for f in pending],
        "nginx_output": output,
        "rejected_in": where,
    }
    location = error_location(error)
    if location:
        evidence["error_file"], evidence["error_line"] = location
    if len(pending) == 1:
        evidence["rejected_content"] = _text(pending[0].content)
    evidence.update(extra)
    return evidence


def go_live(pending: t.Sequence[FileState]) -> None:
    for state in pending:
        if state.content is None:
            restore_file(state.path, None)
        else:
            write_atomic(state.path, state.content, state.mode)


def put_back(pending: t.Sequence[FileState]) -> list[str]:
    """Put every previous file back; returns the errors of those that could not be (one line each)."""
    errors = []
    for state in pending:
        try:
            restore_file(state.path, state.previous, state.mode)
        except OSError as exc:
            errors.append("%s: %s" % (state.path, exc))
    return errors


def _what(pending: t.Sequence[FileState]) -> str:
    return ", ".join(f.path for f in pending)


def _previous_words(pending: t.Sequence[FileState]) -> str:
    if len(pending) > 1:
        return "previous files were"
    return "previous %s was" % ("file" if pending[0].previous is not None else "state (no file)")


def _reject_live(pending: t.Sequence[FileState], test: CommandResult, nginx: NginxControl, copied: bool) -> None:
    """The live test failed: put back, test again, raise (nginx never loaded the rejected files)."""
    error = nginx_error_line(test.output)
    failed = put_back(pending)
    if failed:
        raise NginxConfigRejected(
            "nginx -t rejected %s and putting the previous file back failed too (%s): fix the file by hand "
            "before nginx reloads. nginx said: %s" % (_what(pending), "; ".join(failed), error),
            error,
            {"path": pending[0].path if len(pending) == 1 else _what(pending), "nginx_output": test.output},
        )
    after = nginx.test()
    if copied:
        message = (
            "nginx -t rejected the live configuration right after the promotion of %s, although the copy had "
            "passed (something outside the copy differs: an absolute or relative include, or a writer that does "
            "not take the lock); the %s put back and nginx keeps serving the last good configuration. nginx "
            "said: %s" % (_what(pending), _previous_words(pending), error)
        )
    else:
        message = (
            "nginx -t rejected the new %s; the %s put back and nginx keeps serving the last good "
            "configuration. nginx said: %s" % (_what(pending), _previous_words(pending), error)
        )
    raise NginxConfigRejected(
        message,
        error,
        _rejection_evidence(
            pending, test.output, error, "live", test_after_restore="ok" if after.rc == 0 else after.output
        ),
    )


def _reload_failed(pending: t.Sequence[FileState], done: CommandResult, nginx: NginxControl) -> None:
    """The reload failed: put back, and test + reload again so nginx runs what is on disk."""
    failed = put_back(pending)
    again = ""
    if not failed and nginx.test().rc == 0:
        retry = nginx.reload()
        again = "reloaded with them" if retry.rc == 0 else "the reload after that failed too: %s" % retry.output
    raise NginxReloadFailed(
        "%s passed nginx -t but `%s` failed: %s. %s"
        % (
            _what(pending),
            " ".join(done.argv),
            done.output.strip(),
            ("Putting the previous files back failed too (%s)" % "; ".join(failed))
            if failed
            else "The %s put back%s." % (_previous_words(pending), ", " + again if again else ""),
        ),
        {"path": _what(pending), "reload_output": done.output},
    )


# --------------------------------------------------------------------------------------------------------
# The one activation
# --------------------------------------------------------------------------------------------------------


def activate_files(
    changes: t.Sequence[FileChange],
    nginx: NginxControl | None = None,
    check_mode: bool = False,
    reload: bool = True,
    lock_path: str | None = DEFAULT_LOCK_PATH,
    lock_wait_s: float | None = DEFAULT_LOCK_WAIT_S,
    test_copy: bool = False,
    operation: str = "nginx configuration",
    scratch_parent: str | None = None,
) -> Activation:
    """Make each file hold its new content without ever leaving nginx on a configuration it rejected.

    Unchanged content: nothing is written, tested or reloaded. check_mode reports what would change. See the
    module docstring for the order of the steps and what is put back when.
    """
    nginx = nginx or NginxControl()
    paths = [os.path.abspath(c.path) for c in changes]
    if len(set(paths)) != len(paths):
        raise NginxError("the same file is given twice: %s" % ", ".join(paths), {"paths": paths})
    with config_lock(None if check_mode else lock_path, operation, lock_wait_s):
        states = [FileState(c.path, c.content, _read_bytes(c.path), c.mode) for c in changes]
        result = Activation(states)
        pending = [s for s in states if s.changed]
        result.changed = bool(pending)
        if not pending:
            return result
        if check_mode:
            result.note = "check mode: nothing written"
            return result
        if test_copy:
            check_in_copy(pending, nginx, scratch_parent)
        _activate_live(pending, nginx, reload, result, copied=test_copy)
        return result


def _activate_live(
    pending: t.Sequence[FileState], nginx: NginxControl, reload: bool, result: Activation, copied: bool
) -> None:
    """Steps 3 and 4: live, tested, reloaded; anything else puts the previous files back."""
    reload_sent = False
    try:
        with signals_raise():
            go_live(pending)
            test = nginx.test()
            if test.rc != 0:
                _reject_live(pending, test, nginx, copied)
            result.nginx_test = test.output
            if not reload:
                result.note = "reload skipped (reload=false)"
                return
            if not nginx.is_running():
                result.note = "nginx is not running: it reads the new file when it starts"
                return
            reload_sent = True
            done = nginx.reload()
            result.reload_command = list(done.argv)
            if done.rc != 0:
                _reload_failed(pending, done, nginx)
            result.reloaded = True
    except NginxError:
        raise  # the failure paths above have put the previous files back already
    except BaseException:
        with signals_blocked():
            put_back(pending)
            if reload_sent and nginx.test().rc == 0:
                nginx.reload()  # nginx may have loaded the new files: make it run what is on disk
        raise


def activate(
    path: str,
    content: str | None,
    nginx: NginxControl | None = None,
    check_mode: bool = False,
    reload: bool = True,
    lock_path: str | None = DEFAULT_LOCK_PATH,
    lock_wait_s: float | None = DEFAULT_LOCK_WAIT_S,
    test_copy: bool = False,
) -> ActivationResult:
    """Make `content` the file at `path` (None removes it): activate_files for one text file."""
    data = None if content is None else content.encode("utf-8")
    done = activate_files(
        [FileChange(path, data)],
        nginx=nginx,
        check_mode=check_mode,
        reload=reload,
        lock_path=lock_path,
        lock_wait_s=lock_wait_s,
        test_copy=test_copy,
        operation="nginx: %s" % os.path.basename(path),
    )
    state = done.files[0]
    return ActivationResult(
        path,
        done.changed,
        content or "",
        _text(state.previous),
        done.reloaded,
        done.reload_command,
        done.nginx_test,
        done.note,
    )


__all__ = [
    "DEFAULT_LOCK_PATH",
    "DEFAULT_LOCK_WAIT_S",
    "DEFAULT_MODE",
    "DEFAULT_NGINX_BINARY",
    "DEFAULT_NGINX_CONF",
    "DEFAULT_NGINX_UNIT",
    "DEFAULT_PID_FILE",
    "Activation",
    "ActivationResult",
    "FileChange",
    "FileState",
    "Interrupted",
    "NginxBusy",
    "NginxConfigRejected",
    "NginxControl",
    "NginxError",
    "NginxReloadFailed",
    "activate",
    "activate_files",
    "check_in_copy",
    "config_lock",
    "error_location",
    "nginx_error_line",
    "signals_blocked",
    "signals_raise",
]
