# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The compression and encryption pipeline: dump bytes -> zstd (-> age) -> <name>.partial, and back.

Private to this collection: not a public API, it may change in any release.

An artifact is written through ``zstd`` (and ``age`` to the recipients when encryption is on) into
``<name>.partial`` beside its final name, hashed on the way, fsynced and renamed. A restore reads it back through
``age -d`` and ``zstd -d``. Every stage's exit status counts.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import hashlib
import os
import shutil
import subprocess
import threading
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.errors import (
    CHUNK,
    EXIT_COMPRESS,
    EXIT_DISK,
    EXIT_INTERNAL,
    EXIT_USAGE,
    BackupError,
    disk_full,
)
from ansible_collections.opsbook.stack.plugins.module_utils._files import DISK_FULL_ERRNOS, fsync_dir, unlink_quiet

# The flusher thread fdatasyncs every FLUSH_EVERY bytes, so the final fsync has little left to do.
FLUSH_EVERY = 32 * CHUNK


class ArtifactWriter:
    """zstd (and, with recipients, age) processes: the raw dump goes into zstd's stdin, the last stage's stdout
    goes, hashed, into <path>.partial. Every stage's exit status counts."""

    def __init__(
        self,
        path: str,
        zstd: str = "zstd",
        level: int = 3,
        threads: int = 1,
        age_recipients: t.Sequence[str] = (),
        age: str = "age",
    ):
        self.path = path
        self.partial = path + ".partial"
        binary = shutil.which(zstd)
        if not binary:
            raise BackupError(EXIT_COMPRESS, "zstd not found (%s): install the zstd package on this host" % zstd)
        self.argv = [binary, "-q", "-c", "-%d" % level, "-T%d" % threads]
        age_argv: list[str] = []
        if age_recipients:
            age_binary = shutil.which(age)
            if not age_binary:
                raise BackupError(
                    EXIT_COMPRESS,
                    "age not found (%s): install the age package on this host or remove the age recipients" % age,
                )
            age_argv = [age_binary]
            for recipient in age_recipients:
                age_argv += ["-r", recipient]
        self.digest = hashlib.sha256()
        self.written = 0
        self.raw = 0
        self.error: BaseException | None = None
        self.fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.procs = [self.proc]
        if age_argv:
            self.procs.append(
                subprocess.Popen(
                    age_argv,
                    stdin=self.proc.stdout,
                    stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                    stderr=subprocess.PIPE,
                    bufsize=0,
                )
            )
            self.proc.stdout.close()  # type: ignore[union-attr]  # age holds it now; zstd sees EPIPE if age dies
        # Write-back starts while the dump still runs (a flusher thread fdatasyncs every FLUSH_EVERY bytes), so
        # the final fsync has little left to do.
        self.flush_wanted = threading.Event()
        self.flush_done = False
        self.flusher = threading.Thread(target=self._flush_loop, daemon=True)
        self.flusher.start()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _flush_loop(self) -> None:
        while True:
            self.flush_wanted.wait()
            self.flush_wanted.clear()
            if self.flush_done:
                return
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                if self.error is None:
                    self.error = exc
                return

    def _stop_flusher(self) -> None:
        self.flush_done = True
        self.flush_wanted.set()
        self.flusher.join()

    def _drain(self) -> None:
        out = self.procs[-1].stdout
        if out is None:  # Popen was given stdout=PIPE; this only narrows the type
            raise RuntimeError("the last stage has no stdout pipe")
        try:
            while True:
                block = out.read(CHUNK)
                if not block:
                    break
                self.digest.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(self.fd, view) :]
                before = self.written
                self.written += len(block)
                if self.written // FLUSH_EVERY != before // FLUSH_EVERY:
                    self.flush_wanted.set()
        except BaseException as exc:  # pylint: disable=broad-except
            self.error = exc
            for proc in self.procs:
                proc.kill()  # unblocks the feeder: its next write fails

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self._failure()
        self.raw += len(data)
        try:
            view = memoryview(data)
            while view:
                view = view[self.proc.stdin.write(view) or 0 :]  # type: ignore[union-attr]
        except (BrokenPipeError, OSError) as exc:
            self.thread.join(5)
            raise self._failure() from exc

    def _failure(self) -> BackupError:
        err = self.error
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return disk_full(self.partial, self.written, err)
        if err is not None:
            return BackupError(
                EXIT_DISK if isinstance(err, OSError) else EXIT_INTERNAL, "writing %s failed: %s" % (self.partial, err)
            )
        return BackupError(EXIT_COMPRESS, "%s while compressing into %s" % (self._statuses(), self.partial))

    def _statuses(self) -> str:
        parts = []
        for proc in self.procs:
            rc = proc.poll()
            err = ""
            if rc not in (None, 0):
                try:
                    err = (proc.stderr.read(4096) or b"").decode(errors="replace").strip()  # type: ignore[union-attr]
                except (OSError, ValueError):
                    pass
            parts.append(
                "%s exited with %s%s"
                % (
                    os.path.basename(str(proc.args[0])),  # type: ignore[index]
                    rc,
                    (": " + err) if err else "",
                )
            )
        return ", ".join(parts)

    def finish(self) -> tuple[int, str]:
        """Close zstd's input, wait for every stage, fsync and rename; returns (size, sha256)."""
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        self.thread.join()
        codes = [proc.wait() for proc in self.procs]
        self._stop_flusher()
        if self.error is not None:
            raise self._failure()
        if any(codes):
            raise BackupError(EXIT_COMPRESS, "%s compressing into %s" % (self._statuses(), self.partial))
        try:
            os.fsync(self.fd)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise disk_full(self.partial, self.written, exc) from exc
            raise
        os.close(self.fd)
        self.fd = -1
        os.rename(self.partial, self.path)
        fsync_dir(os.path.dirname(self.path))
        return self.written, self.digest.hexdigest()

    def abort(self) -> None:
        """Kill every stage, close and remove the partial file."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
            proc.wait()
        self.thread.join(5)
        self._stop_flusher()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        unlink_quiet(self.partial)


class _Pipeline:
    """age -d | zstd -d, looking like one Popen to the code that reads it: the first failing stage's status."""

    def __init__(self, first: subprocess.Popen, last: subprocess.Popen):
        self.first, self.last = first, last
        self.stdout = last.stdout
        self.stderr = self

    def poll(self) -> int | None:
        return self.last.poll()

    def wait(self) -> int:
        codes = [self.first.wait(), self.last.wait()]
        return next((c for c in codes if c), 0)

    def read(self, size: int = -1) -> bytes:
        """stderr of both stages (age's first: a wrong identity is the likely story)."""
        return b" ".join((p.stderr.read(size) or b"") for p in (self.first, self.last) if p.stderr)


def decompressor(path: str, settings: t.Any, encrypted: bool = False) -> tuple[t.Any, t.Callable[[], bytes]]:
    """zstd -d (after age -d for an encrypted artifact) of path; returns the process (or pipeline) and a chunk reader.

    settings: zstd, age and age_identity (a Settings).
    """
    binary = shutil.which(settings.zstd)
    if not binary:
        raise BackupError(EXIT_COMPRESS, "zstd not found (%s): install the zstd package on this host" % settings.zstd)
    if not encrypted:
        proc = subprocess.Popen(
            [binary, "-q", "-d", "-c", path],
            stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        return proc, lambda: proc.stdout.read(CHUNK)  # type: ignore[union-attr]
    age = shutil.which(settings.age)
    if not age:
        raise BackupError(EXIT_COMPRESS, "%s is encrypted and age is not installed on this host" % path)
    if not settings.age_identity or not os.path.isfile(settings.age_identity):
        raise BackupError(
            EXIT_USAGE,
            "%s is encrypted: set age_identity to the age identity (private key) file "
            "of one of its recipients (have: %r)" % (path, settings.age_identity),
        )
    decrypt = subprocess.Popen(
        [age, "-d", "-i", settings.age_identity, path],  # pylint: disable=consider-using-with
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    proc = subprocess.Popen(
        [binary, "-q", "-d", "-c"],
        stdin=decrypt.stdout,
        stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    decrypt.stdout.close()  # type: ignore[union-attr]
    return _Pipeline(decrypt, proc), lambda: proc.stdout.read(CHUNK)  # type: ignore[union-attr]


def decompressed_chunks(path: str, settings: t.Any, encrypted: bool, failure: BackupError) -> t.Iterator[bytes]:
    """The decompressed content of path, chunk by chunk; failure is raised when a stage exits non-zero."""
    proc, source = decompressor(path, settings, encrypted)
    yield from iter(source, b"")
    if proc.wait() != 0:
        raise failure
