# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backups that can be proven: dump, compress, checksum, commit, verify by restore.

Private to this collection: not a public API, it may change in any release.

One implementation serves the ``backup``/``restore`` modules and the cron job. It uses the standard library
only, so the ``backup`` role copies this file and ``_docker.py`` to the host and cron runs it directly::

    python3 /usr/local/lib/opsbook/_backup.py --config /etc/opsbook/backup.json backup mariadb

Layout: ``<dest>/<component>/<backup id>/`` holds the artifacts (``*.zst``) and ``manifest.json``. Every
artifact is streamed from a Docker exec (or the archive API) through ``zstd`` into ``<name>.partial``,
fsynced and renamed; the manifest (sha256 and size of every artifact) is written last, the same way, and is
the commit marker: a directory without a manifest is not a backup. Retention deletes only the files a
manifest lists and never the newest backup that verifies.

Exit codes of the command line (and ``BackupError.exit_code``):

==  =================================================================================
0   success
1   unexpected internal error (a bug: the traceback is printed)
2   usage or configuration error
3   another run of the same job holds the lock
4   Docker Engine unreachable, container or volume missing or not running
5   the dump command failed (non-zero exit, tool missing in the container)
6   the dump is empty, too small or truncated (implausible)
7   compression failed (zstd missing or non-zero exit)
8   not enough disk space (preflight or ENOSPC while writing)
9   verification failed (checksum mismatch, missing artifact, no committed backup)
10  restore failed
11  restore drill failed
12  retention failed (the backup itself succeeded)
==  =================================================================================
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import argparse
import datetime
import errno
import fcntl
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import typing as t
from dataclasses import asdict, dataclass, field
from urllib.parse import quote, urlencode, urlsplit

try:
    from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
        DockerAPIError,
        DockerClient,
        DockerError,
        DockerNotFound,
        UnixHTTPConnection,
    )
except ImportError:  # run as a script from /usr/local/lib/opsbook/, next to a copy of _docker.py
    from _docker import (  # type: ignore[no-redef]  # pylint: disable=import-error
        DockerAPIError,
        DockerClient,
        DockerError,
        DockerNotFound,
        UnixHTTPConnection,
    )

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_DOCKER = 4
EXIT_DUMP = 5
EXIT_IMPLAUSIBLE = 6
EXIT_COMPRESS = 7
EXIT_DISK = 8
EXIT_VERIFY = 9
EXIT_RESTORE = 10
EXIT_DRILL = 11
EXIT_RETENTION = 12

EXIT_CLASSES = {
    EXIT_OK: "ok",
    EXIT_INTERNAL: "internal",
    EXIT_USAGE: "usage",
    EXIT_LOCKED: "locked",
    EXIT_DOCKER: "docker",
    EXIT_DUMP: "dump_failed",
    EXIT_IMPLAUSIBLE: "implausible_dump",
    EXIT_COMPRESS: "compression_failed",
    EXIT_DISK: "disk_full",
    EXIT_VERIFY: "verify_failed",
    EXIT_RESTORE: "restore_failed",
    EXIT_DRILL: "drill_failed",
    EXIT_RETENTION: "retention_failed",
}

TYPES = ("mariadb", "mysql", "postgres", "redis", "prometheus", "volume")
MANIFEST = "manifest.json"
PRUNING = "manifest.pruning.json"
STATE = "state.json"
SCHEMA = 1
CHUNK = 1024 * 1024
FLUSH_EVERY = 32 * CHUNK
# Below this many uncompressed bytes a dump is not a dump but an error message or a header.
DEFAULT_MIN_BYTES = {"mariadb": 512, "mysql": 512, "postgres": 64, "redis": 18, "prometheus": 1024, "volume": 1024}
MARIADB_SYSTEM_DBS = ("information_schema", "performance_schema", "sys", "mysql")
STDERR_LIMIT = 64 * 1024


class BackupError(Exception):
    """A failure with its class (the exit code), a message for the person on call and the evidence."""

    def __init__(self, exit_code: int, message: str, evidence: dict[str, t.Any] | None = None):
        self.exit_code = exit_code
        self.message = message
        self.evidence = evidence or {}
        super().__init__(message)

    @property
    def failure_class(self) -> str:
        return EXIT_CLASSES.get(self.exit_code, "unknown")


# ------------------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ComponentSpec:
    """What to back up, and how many copies to keep."""

    name: str
    type: str
    container: str = ""
    volume: str = ""
    databases: list[str] = field(default_factory=list)
    user: str = ""
    password: str = ""
    zstd_level: int = 3
    zstd_threads: int = 1
    min_bytes: int | None = None
    keep_last: int = 7
    keep_daily: int = 7
    keep_weekly: int = 4
    helper_image: str = ""
    stop_owners: bool | None = None  # volume: None = stop owners labelled opsbook.backup.stop=true
    api_port: int = 9090  # prometheus: the port of its HTTP API inside the container
    # Before the dump, the exact row count of every table goes into the manifest (the drill compares them);
    # CHECKSUM TABLE is a second full scan, so it is opt-in.
    source_counts: bool = True
    source_checksums: bool = False

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise BackupError(
                EXIT_USAGE, "component %s: type %r is not one of %s" % (self.name, self.type, ", ".join(TYPES))
            )
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", self.name or ""):
            raise BackupError(EXIT_USAGE, "component name %r: use letters, digits, '.', '_' and '-'" % self.name)
        if self.type == "volume" and not self.volume:
            raise BackupError(EXIT_USAGE, "component %s: type volume needs volume: <docker volume name>" % self.name)
        if self.type != "volume" and not self.container:
            raise BackupError(EXIT_USAGE, "component %s: type %s needs container: <name>" % (self.name, self.type))
        if self.keep_last < 1:
            raise BackupError(EXIT_USAGE, "component %s: keep_last must be at least 1" % self.name)

    @property
    def engine(self) -> str:
        return "mariadb" if self.type in ("mariadb", "mysql") else self.type

    @property
    def plausible_bytes(self) -> int:
        return self.min_bytes if self.min_bytes is not None else DEFAULT_MIN_BYTES[self.type]

    @classmethod
    def from_dict(cls, name: str, data: dict[str, t.Any]) -> ComponentSpec:
        known = set(cls.__dataclass_fields__)  # pylint: disable=no-member
        unknown = sorted(set(data) - known - {"name", "schedule"})
        if unknown:
            raise BackupError(EXIT_USAGE, "component %s: unknown settings %s" % (name, ", ".join(unknown)))
        values = {k: v for k, v in data.items() if k in known and k != "name"}
        return cls(name=name, **values)


@dataclass
class Settings:
    dest: str = "/var/backups/opsbook"
    metrics_dir: str = ""  # node_exporter's textfile directory; empty: no metrics
    docker_host: str = "unix:///var/run/docker.sock"
    space_margin: float = 0.2  # the preflight wants last size * (1 + margin) free
    min_free_bytes: int = 16 * 1024 * 1024
    drill_prefix: str = "opsbook-drill-"
    drill_timeout: float = 120.0
    timeout: float = 3600.0  # per exec stream: no byte for this long is a hang
    zstd: str = "zstd"
    # Encrypt every artifact to these age public keys (age1...); empty: not encrypted.
    age_recipients: list[str] = field(default_factory=list)
    # An age identity file (private key) that restores and drills decrypt with; kept off the host when possible.
    age_identity: str = ""
    age: str = "age"


# ------------------------------------------------------------------------------------------------------------
# Small helpers: time, hashing, atomic files, locks
# ------------------------------------------------------------------------------------------------------------


def utc_id(ts: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(time.time() if ts is None else ts, datetime.UTC).strftime(
        "%Y%m%dT%H%M%SZ"
    )


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _disk_full(path: str, written: int, exc: OSError, extra: int = CHUNK) -> BackupError:
    try:
        free = _free_bytes(os.path.dirname(path))
    except OSError:
        free = -1
    return BackupError(
        EXIT_DISK,
        "disk full writing %s: %d bytes written, at least %d more needed, %d free on %s (%s); the partial file "
        "was removed and older backups are untouched"
        % (path, written, extra, free, os.path.dirname(path), os.strerror(exc.errno or errno.ENOSPC)),
        {"path": path, "written_bytes": written, "needed_bytes": written + extra, "free_bytes": free},
    )


def write_atomic(path: str, data: bytes, mode: int = 0o640) -> None:
    """<path>.partial, fsync, rename, fsync the directory; ENOSPC removes the partial file."""
    partial = path + ".partial"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, path)
    except OSError as exc:
        _unlink_quiet(partial)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, 0, exc, len(data)) from exc
        raise
    fsync_dir(os.path.dirname(path) or ".")


def write_json_atomic(path: str, data: t.Any) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _NoLock:
    def __enter__(self) -> _NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class JobLock:
    """One flock per job (component), held for the whole backup, restore or drill; never waits."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> JobLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = b""
            try:
                holder = os.pread(self.fd, 64, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
            raise BackupError(
                EXIT_LOCKED,
                "another backup/restore of this job is running (lock %s held by pid %s)"
                % (self.path, holder.decode(errors="replace").strip() or "?"),
            ) from exc
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


# ------------------------------------------------------------------------------------------------------------
# Docker exec as a stream: the dump goes from the container to zstd without touching memory as a whole
# ------------------------------------------------------------------------------------------------------------


class _RawReader:
    """Reads an upgraded (hijacked) Docker connection: bytes left over from the header first, then the socket."""

    def __init__(self, sock: socket.socket, leftover: bytes):
        self.sock = sock
        self.leftover = leftover

    def read(self, size: int) -> bytes:
        if self.leftover:
            data, self.leftover = self.leftover[:size], self.leftover[size:]
            return data
        return self.sock.recv(size)

    def read_exact(self, size: int) -> bytes:
        parts = []
        while size:
            data = self.read(size)
            if not data:
                break
            parts.append(data)
            size -= len(data)
        return b"".join(parts)


@dataclass
class StreamResult:
    exit_code: int | None
    stdout_bytes: int
    head: bytes
    tail: bytes
    stderr: bytes
    stdout: bytes = b""  # kept only when asked (small outputs)


class DockerStreams:
    """Exec with streamed stdin/stdout and the archive API, on top of _docker.DockerClient."""

    def __init__(self, client: DockerClient, timeout: float = 3600.0):
        self.client = client
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        if self.client.socket_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.client.socket_path)
            except OSError as exc:
                sock.close()
                raise self.client._explain_connect_error(exc) from exc  # pylint: disable=protected-access
        else:
            sock = socket.create_connection(self.client._tcp)  # type: ignore[arg-type]  # pylint: disable=protected-access
        sock.settimeout(self.timeout)
        return sock

    def _http(self) -> t.Any:
        if self.client.socket_path:
            return UnixHTTPConnection(self.client.socket_path, timeout=self.timeout)
        host, port = self.client._tcp  # type: ignore[misc]  # pylint: disable=protected-access
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def exec_stream(
        self,
        container: str,
        command: list[str],
        env: dict[str, str] | None = None,
        stdout_sink: t.Callable[[bytes], None] | None = None,
        stdin_source: t.Callable[[], bytes] | None = None,
        keep_stdout: int = 0,
        user: str = "",
    ) -> StreamResult:
        """Run command in container; stdout goes to stdout_sink chunk by chunk, stdin comes from stdin_source
        (called until it returns b""). Returns the exit code from exec inspect, stdout size, head and tail."""
        body: dict[str, t.Any] = {
            "AttachStdin": stdin_source is not None,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "Cmd": list(command),
        }
        if env:
            body["Env"] = ["%s=%s" % (k, v) for k, v in env.items()]
        if user:
            body["User"] = user
        try:
            exec_id = self.client.request_json("POST", "/containers/%s/exec" % quote(container, safe=""), body=body)[
                "Id"
            ]
        except DockerNotFound as exc:
            raise BackupError(EXIT_DOCKER, "container %s does not exist" % container) from exc
        except DockerAPIError as exc:
            raise BackupError(EXIT_DOCKER, "cannot exec in container %s: %s" % (container, exc.explanation)) from exc
        sock = self._connect()
        payload = json.dumps({"Detach": False, "Tty": False}).encode()
        request = (
            "POST /v%s/exec/%s/start HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: %d\r\n\r\n"
            % (self.client.api_version, exec_id, len(payload))
        ).encode() + payload
        writer: threading.Thread | None = None
        writer_error: list[BaseException] = []
        stderr = bytearray()
        kept = bytearray()
        head = b""
        tail = b""
        total = 0
        try:
            sock.sendall(request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = sock.recv(4096)
                if not data:
                    raise BackupError(EXIT_DOCKER, "Docker Engine closed the exec stream before answering")
                buf += data
            header, leftover = buf.split(b"\r\n\r\n", 1)
            status = int(header.split(b" ", 2)[1])
            if status not in (101, 200):
                raise BackupError(EXIT_DOCKER, "exec start in %s: HTTP %s %s" % (container, status, leftover[:500]))
            if stdin_source is not None:

                def pump() -> None:
                    try:
                        while True:
                            block = stdin_source()
                            if not block:
                                break
                            sock.sendall(block)
                    except BaseException as exc:  # pylint: disable=broad-except
                        writer_error.append(exc)
                    finally:
                        try:
                            sock.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass

                writer = threading.Thread(target=pump, daemon=True)
                writer.start()
            reader = _RawReader(sock, leftover)
            while True:
                frame = reader.read_exact(8)
                if len(frame) < 8:
                    break
                stream = frame[0]
                remaining = int.from_bytes(frame[4:8], "big")
                while remaining:
                    data = reader.read(min(remaining, CHUNK))
                    if not data:
                        remaining = 0
                        break
                    remaining -= len(data)
                    if stream == 2:
                        if len(stderr) < STDERR_LIMIT:
                            stderr.extend(data[: STDERR_LIMIT - len(stderr)])
                        continue
                    if total < 64:
                        head = (head + data)[:64]
                    total += len(data)
                    tail = (tail + data)[-256:] if len(data) < 256 else data[-256:]
                    if keep_stdout and len(kept) < keep_stdout:
                        kept.extend(data[: keep_stdout - len(kept)])
                    if stdout_sink is not None:
                        stdout_sink(data)
        except TimeoutError as exc:
            raise BackupError(
                EXIT_DUMP, "%s in %s: no output for %g s (hung?)" % (command[0], container, self.timeout)
            ) from exc
        finally:
            sock.close()
            if writer is not None:
                writer.join(5)
        exit_code = self._exit_code(exec_id)
        if writer_error and not isinstance(writer_error[0], (BrokenPipeError, ConnectionResetError)):
            raise writer_error[0]
        return StreamResult(exit_code, total, head, tail, bytes(stderr), bytes(kept))

    def _exit_code(self, exec_id: str) -> int | None:
        deadline = time.monotonic() + 10
        while True:
            info = self.client.exec_inspect(exec_id)
            if not info.get("Running") or time.monotonic() > deadline:
                return info.get("ExitCode")
            time.sleep(0.05)

    def run(
        self, container: str, command: list[str], env: dict[str, str] | None = None, limit: int = 4 * 1024 * 1024
    ) -> StreamResult:
        """A small command whose whole output is wanted."""
        return self.exec_stream(container, command, env=env, keep_stdout=limit)

    def get_archive(self, container: str, path: str, sink: t.Callable[[bytes], None]) -> int:
        """Stream the tar of path in container (running or not) into sink; returns the byte count."""
        conn = self._http()
        url = "/v%s/containers/%s/archive?%s" % (
            self.client.api_version,
            quote(container, safe=""),
            urlencode({"path": path}),
        )
        total = 0
        try:
            conn.request("GET", url)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise BackupError(
                    EXIT_DOCKER, "archive of %s:%s: HTTP %s %s" % (container, path, resp.status, resp.read(500))
                )
            while True:
                data = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
                if not data:
                    break
                total += len(data)
                sink(data)
        finally:
            conn.close()
        return total

    def put_archive(self, container: str, path: str, chunks: t.Iterable[bytes], length: int) -> None:
        conn = self._http()
        url = "/v%s/containers/%s/archive?%s" % (
            self.client.api_version,
            quote(container, safe=""),
            urlencode({"path": path}),
        )
        try:
            headers = {"Content-Type": "application/x-tar", "Content-Length": str(length)}
            conn.request("PUT", url, body=chunks, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status >= 400:
                raise BackupError(
                    EXIT_RESTORE, "copy into %s:%s failed: HTTP %s %s" % (container, path, resp.status, body[:500])
                )
        finally:
            conn.close()


# ------------------------------------------------------------------------------------------------------------
# Artifacts: stream -> zstd -> <name>.partial -> fsync -> rename
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Artifact:
    name: str
    kind: str  # sql | pg_custom | pg_globals | rdb | tar
    bytes: int = 0
    sha256: str = ""
    raw_bytes: int = 0
    database: str = ""
    info: dict[str, t.Any] = field(default_factory=dict)
    encrypted: bool = False  # zstd, then age to the recipients: restoring needs an identity (Settings.age_identity)


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
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return _disk_full(self.partial, self.written, err)
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
                    os.path.basename(str(proc.args[0])),
                    rc,  # type: ignore[index]
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
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(self.partial, self.written, exc) from exc
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
        _unlink_quiet(self.partial)


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
        return b" ".join((p.stderr.read(size) or b"") for p in (self.first, self.last) if p.stderr)  # type: ignore[union-attr]


def _plausibility(kind: str, head: bytes, tail: bytes) -> str:
    """Why this output is not a complete dump of its kind ("" when it looks complete)."""
    if kind == "sql" and b"-- Dump completed" not in tail:
        return "the SQL dump has no '-- Dump completed' trailer (cut off)"
    if kind == "pg_custom" and not head.startswith(b"PGDMP"):
        return "not a pg_dump custom-format archive (no PGDMP header)"
    if kind == "rdb" and (not head.startswith(b"REDIS") or len(tail) < 9 or tail[-9] != 0xFF):
        return "not a complete Redis RDB file (REDIS header / EOF marker missing)"
    if kind == "tar" and tail[-1024:] != b"\0" * 1024:
        return "the tar stream does not end with its two zero blocks (cut off)"
    return ""


# ------------------------------------------------------------------------------------------------------------
# Per-engine knowledge
# ------------------------------------------------------------------------------------------------------------


def _container_env(info: dict[str, t.Any]) -> dict[str, str]:
    env = {}
    for item in (info.get("Config") or {}).get("Env") or []:
        key, _sep, value = item.partition("=")
        env[key] = value
    return env


def _first(env: dict[str, str], *names: str) -> str:
    for name in names:
        if env.get(name):
            return env[name]
    return ""


class Engine:
    """Runs dumps and restores for one component through DockerStreams."""

    def __init__(self, spec: ComponentSpec, settings: Settings, client: DockerClient | None = None):
        self.spec = spec
        self.settings = settings
        self.client = client or DockerClient(settings.docker_host, timeout=60)
        self.streams = DockerStreams(self.client, timeout=settings.timeout)
        self._tools: dict[tuple[str, str], str] = {}

    # -- container facts -------------------------------------------------------------------------------

    def container_info(self, container: str | None = None) -> dict[str, t.Any]:
        name = container or self.spec.container
        try:
            info = self.client.inspect_container(name)
        except DockerNotFound as exc:
            raise BackupError(
                EXIT_DOCKER, "container %s does not exist (component %s)" % (name, self.spec.name)
            ) from exc
        except DockerError as exc:
            raise BackupError(EXIT_DOCKER, str(exc)) from exc
        if not (info.get("State") or {}).get("Running"):
            raise BackupError(
                EXIT_DOCKER, "container %s is not running (component %s): start it first" % (name, self.spec.name)
            )
        return info

    def credentials(
        self, container: str | None = None, info: dict[str, t.Any] | None = None
    ) -> tuple[str, dict[str, str]]:
        """(user, exec environment). Passwords travel in the exec environment, never in argv."""
        env = _container_env(info or self.container_info(container))
        if self.spec.engine == "mariadb":
            user = self.spec.user or "root"
            password = self.spec.password or (
                _first(env, "MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD")
                if user == "root"
                else _first(env, "MARIADB_PASSWORD", "MYSQL_PASSWORD")
            )
            return user, ({"MYSQL_PWD": password} if password else {})
        if self.spec.engine == "postgres":
            user = self.spec.user or env.get("POSTGRES_USER") or "postgres"
            password = self.spec.password or env.get("POSTGRES_PASSWORD", "")
            return user, ({"PGPASSWORD": password} if password else {})
        if self.spec.engine == "redis":
            password = self.spec.password or _first(env, "REDIS_PASSWORD", "REDISCLI_AUTH")
            return "", ({"REDISCLI_AUTH": password} if password else {})
        return "", {}

    def _check(self, res: StreamResult, what: str, code: int = EXIT_DUMP, container: str = "") -> str:
        if res.exit_code != 0:
            raise BackupError(
                code,
                "%s in container %s exited with %s: %s"
                % (
                    what,
                    container or self.spec.container,
                    res.exit_code,
                    res.stderr.decode(errors="replace").strip()[-2000:],
                ),
                {"stderr": res.stderr.decode(errors="replace")[-4000:], "exit_code": res.exit_code},
            )
        return res.stdout.decode(errors="replace")

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
        if self.spec.engine == "mariadb":
            argv = [self.mariadb_client(container), "-u", user, "-N", "-B", "-e", query] + (
                [database] if database else []
            )
        else:
            argv = [
                "psql",
                "-U",
                user,
                "-X",
                "-A",
                "-t",
                "-F",
                "\t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                query,
                "-d",
                database or "postgres",
            ]
        out = self._check(self.streams.run(container, argv, env=env), "query %r" % query[:80], code, container)
        return [line.split("\t") for line in out.splitlines() if line]

    def _tool(self, container: str, candidates: tuple[str, ...]) -> str:
        key = (container, candidates[0])
        if key not in self._tools:
            for name in candidates:
                res = self.streams.run(container, [name, "--version"])
                if res.exit_code not in (126, 127) and res.exit_code is not None:
                    self._tools[key] = name
                    break
            else:
                raise BackupError(EXIT_DUMP, "none of %s found in container %s" % (", ".join(candidates), container))
        return self._tools[key]

    def mariadb_dump_tool(self, container: str) -> str:
        return self._tool(container, ("mariadb-dump", "mysqldump"))

    def mariadb_client(self, container: str) -> str:
        return self._tool(container, ("mariadb", "mysql"))

    def databases(self, container: str) -> list[str]:
        if self.spec.databases:
            return list(self.spec.databases)
        if self.spec.engine == "mariadb":
            rows = self.sql(container, "SHOW DATABASES")
            return sorted(r[0] for r in rows if r[0] not in MARIADB_SYSTEM_DBS)
        rows = self.sql(
            container,
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
            "AND datname <> 'postgres' ORDER BY 1",
        )
        return [r[0] for r in rows]

    # -- table facts (recorded in the manifest, checked by the drill) ------------------------------------

    def table_counts(
        self,
        container: str,
        database: str,
        env: dict[str, str] | None = None,
        user: str | None = None,
        code: int = EXIT_DUMP,
    ) -> dict[str, int]:
        if self.spec.engine == "mariadb":
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
        query = (
            "SELECT table_schema || '.' || table_name, (xpath('/row/c/text()', query_to_xml(format("
            "'SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text "
            "FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
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
        if not names or self.spec.engine != "mariadb":
            return {}
        query = "CHECKSUM TABLE " + ", ".join("`%s`" % n.replace("`", "``") for n in names)
        return {r[0].split(".", 1)[-1]: r[1] for r in self.sql(container, query, database, env, user, code)}

    # -- dumps -----------------------------------------------------------------------------------------

    def _writer(self, path: str) -> ArtifactWriter:
        return ArtifactWriter(
            path,
            self.settings.zstd,
            self.spec.zstd_level,
            self.spec.zstd_threads,
            self.settings.age_recipients,
            self.settings.age,
        )

    def _dump_to(
        self, directory: str, artifact: Artifact, container: str, argv: list[str], env: dict[str, str]
    ) -> Artifact:
        if self.settings.age_recipients:
            artifact.name += ".age"
            artifact.encrypted = True
        path = os.path.join(directory, artifact.name)
        writer = self._writer(path)
        try:
            res = self.streams.exec_stream(container, argv, env=env, stdout_sink=writer.write)
            self._check(res, argv[0], EXIT_DUMP, container)
            if res.stdout_bytes < self.spec.plausible_bytes:
                raise BackupError(
                    EXIT_IMPLAUSIBLE,
                    "%s in %s produced %d bytes (< %d): an empty or failed dump, "
                    "not a backup; stderr: %s"
                    % (
                        argv[0],
                        container,
                        res.stdout_bytes,
                        self.spec.plausible_bytes,
                        res.stderr.decode(errors="replace").strip()[-500:],
                    ),
                )
            why = _plausibility(artifact.kind, res.head, res.tail)
            if why:
                raise BackupError(
                    EXIT_IMPLAUSIBLE,
                    "%s in %s: %s" % (argv[0], container, why),
                    {"tail": res.tail.decode(errors="replace")},
                )
            artifact.bytes, artifact.sha256 = writer.finish()
            artifact.raw_bytes = res.stdout_bytes
            if res.stderr.strip():
                artifact.info["stderr"] = res.stderr.decode(errors="replace")[-2000:]
            return artifact
        except BaseException:
            writer.abort()
            raise

    def dump(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        """Write every artifact of this component into directory; returns them and facts for the manifest."""
        if self.spec.type == "volume":
            return self._dump_volume(directory)
        if self.spec.type == "prometheus":
            return self._dump_prometheus(directory)
        info = self.container_info()
        facts: dict[str, t.Any] = {
            "container": self.spec.container,
            "image": (info.get("Config") or {}).get("Image"),
            "image_id": info.get("Image"),
        }
        user, env = self.credentials(info=info)
        c = self.spec.container
        artifacts = []
        if self.spec.engine == "mariadb":
            tool = self.mariadb_dump_tool(c)
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
                artifacts.append(
                    self._dump_to(directory, Artifact("%s.sql.zst" % db, "sql", database=db), c, argv, env)
                )
        elif self.spec.engine == "postgres":
            artifacts.append(
                self._dump_to(
                    directory, Artifact("globals.sql.zst", "pg_globals"), c, ["pg_dumpall", "-U", user, "-g"], env
                )
            )
            for db in self.databases(c):
                t0 = time.monotonic()
                if self.spec.source_counts:
                    facts.setdefault("tables", {})[db] = self.table_counts(c, db, env, user)
                facts["facts_s"] = round(facts.get("facts_s", 0) + time.monotonic() - t0, 3)
                # -Z0: zstd compresses better and faster than pg_dump's built-in zlib
                argv = ["pg_dump", "-U", user, "-Fc", "-Z0", "-d", db]
                artifacts.append(
                    self._dump_to(directory, Artifact("%s.pgdump.zst" % db, "pg_custom", database=db), c, argv, env)
                )
        elif self.spec.engine == "redis":
            artifacts.append(self._dump_redis(directory, c, env, facts))
        return artifacts, facts

    def _redis(self, container: str, env: dict[str, str], *args: str, code: int = EXIT_DUMP) -> str:
        return self._check(
            self.streams.run(container, ["redis-cli", "--no-raw"] + list(args), env=env),
            "redis-cli %s" % " ".join(args),
            code,
            container,
        ).strip()

    @staticmethod
    def _unquote(value: str) -> str:
        value = value.strip()
        if value.startswith("(integer) "):
            return value[10:]
        return value.strip('"')

    def redis_config(self, container: str, env: dict[str, str], key: str, code: int = EXIT_DUMP) -> str:
        lines = self._redis(container, env, "CONFIG", "GET", key, code=code).splitlines()
        return self._unquote(lines[1].split(")", 1)[-1]) if len(lines) > 1 else ""

    def redis_info(self, container: str, env: dict[str, str], section: str, code: int = EXIT_DUMP) -> dict[str, str]:
        out = self._check(self.streams.run(container, ["redis-cli", "INFO", section], env=env), "INFO", code, container)
        return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)

    def _dump_redis(self, directory: str, c: str, env: dict[str, str], facts: dict[str, t.Any]) -> Artifact:
        before = self._unquote(self._redis(c, env, "LASTSAVE"))
        saves_before = self.redis_info(c, env, "persistence").get("rdb_saves")  # Redis >= 7.0
        if saves_before is None:
            # LASTSAVE has one-second resolution: a save finishing within the second of the previous one would
            # look like no save at all.
            while str(int(time.time())) == before:
                time.sleep(0.05)
        started = time.monotonic()
        out = self._redis(c, env, "BGSAVE")
        if "ERR" in out and "in progress" not in out:
            raise BackupError(EXIT_DUMP, "BGSAVE refused in %s: %s" % (c, out))
        while True:
            info = self.redis_info(c, env, "persistence")
            now = self._unquote(self._redis(c, env, "LASTSAVE"))
            saved = (info.get("rdb_saves") != saves_before) if saves_before is not None else now != before
            if saved and info.get("rdb_bgsave_in_progress") == "0":
                if info.get("rdb_last_bgsave_status") != "ok":
                    raise BackupError(
                        EXIT_DUMP,
                        "BGSAVE in %s failed (rdb_last_bgsave_status:%s): see the Redis log"
                        % (c, info.get("rdb_last_bgsave_status")),
                    )
                break
            if time.monotonic() - started > self.settings.timeout:
                raise BackupError(EXIT_DUMP, "BGSAVE in %s did not finish within %g s" % (c, self.settings.timeout))
            time.sleep(0.1)
        facts["lastsave"] = int(now)
        facts["dbsize"] = int(self._unquote(self._redis(c, env, "DBSIZE")))
        rdir = self.redis_config(c, env, "dir")
        rfile = self.redis_config(c, env, "dbfilename")
        facts["rdb_path"] = "%s/%s" % (rdir.rstrip("/"), rfile)
        # The file is replaced by rename on every save: cat keeps the inode it opened, so the copy is consistent.
        return self._dump_to(directory, Artifact("dump.rdb.zst", "rdb"), c, ["cat", facts["rdb_path"]], {})

    # -- Prometheus: a TSDB snapshot through the admin API, archived out of the container ------------------

    def prometheus_url(self, info: dict[str, t.Any]) -> str:
        for net in ((info.get("NetworkSettings") or {}).get("Networks") or {}).values():
            if net.get("IPAddress"):
                return "http://%s:%d" % (net["IPAddress"], self.spec.api_port)
        if (info.get("HostConfig") or {}).get("NetworkMode") == "host":
            return "http://127.0.0.1:%d" % self.spec.api_port
        raise BackupError(
            EXIT_DOCKER,
            "container %s has no IP address on which this host could reach Prometheus's API" % self.spec.container,
        )

    @staticmethod
    def tsdb_path(info: dict[str, t.Any]) -> str:
        """--storage.tsdb.path of the running server (its default, data/, is relative to the working directory)."""
        args = [str(info.get("Path") or "")] + [str(a) for a in info.get("Args") or []]
        path = "data/"
        for i, arg in enumerate(args):
            if arg.startswith("--storage.tsdb.path="):
                path = arg.split("=", 1)[1]
            elif arg == "--storage.tsdb.path" and i + 1 < len(args):
                path = args[i + 1]
        workdir = (info.get("Config") or {}).get("WorkingDir") or "/"
        return os.path.normpath(os.path.join(workdir, path))

    def _prometheus_api(self, url: str, method: str = "POST", code: int = EXIT_DUMP) -> dict[str, t.Any]:
        """One request to Prometheus's HTTP API (http.client: this file runs without Ansible on the host)."""
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=min(self.settings.timeout, 600)
        )
        try:
            conn.request(
                method, parts.path + ("?" + parts.query if parts.query else ""), body=b"" if method == "POST" else None
            )
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise BackupError(code, "Prometheus API %s: %s" % (url, exc)) from exc
        finally:
            conn.close()
        if resp.status >= 400:
            text = body[:500].decode(errors="replace").strip()
            hint = ""
            if resp.status in (404, 405) or "admin APIs disabled" in text:
                hint = "; start Prometheus with --web.enable-admin-api"
            raise BackupError(code, "Prometheus API %s answered HTTP %s: %s%s" % (url, resp.status, text, hint))
        try:
            return json.loads(body) if body.strip().startswith(b"{") else {"status": "ok"}
        except ValueError as exc:
            raise BackupError(code, "Prometheus API %s: not JSON: %r" % (url, body[:200])) from exc

    def _dump_prometheus(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        info = self.container_info()
        tsdb = self.tsdb_path(info)
        facts: dict[str, t.Any] = {
            "container": self.spec.container,
            "image": (info.get("Config") or {}).get("Image"),
            "image_id": info.get("Image"),
            "tsdb_path": tsdb,
        }
        answer = self._prometheus_api(self.prometheus_url(info) + "/api/v1/admin/tsdb/snapshot")
        snapshot = (answer.get("data") or {}).get("name")
        if answer.get("status") != "success" or not snapshot:
            raise BackupError(EXIT_DUMP, "Prometheus in %s did not make a snapshot: %s" % (self.spec.container, answer))
        facts["snapshot"] = snapshot
        snap_dir = "%s/snapshots/%s" % (tsdb.rstrip("/"), snapshot)
        name = "tsdb.tar.zst" + (".age" if self.settings.age_recipients else "")
        writer = self._writer(os.path.join(directory, name))
        tail = [b""]

        def sink(data: bytes) -> None:
            tail[0] = (tail[0] + data)[-1024:]
            writer.write(data)

        try:
            raw = self.streams.get_archive(self.spec.container, snap_dir, sink)
            if raw < self.spec.plausible_bytes or _plausibility("tar", b"", tail[0]):
                raise BackupError(EXIT_IMPLAUSIBLE, "archive of snapshot %s is %d bytes or cut off" % (snap_dir, raw))
            size, digest = writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            # A snapshot is hard links into the TSDB: left behind, it would pin blocks retention wants to delete.
            if self.streams.run(self.spec.container, ["rm", "-rf", snap_dir]).exit_code != 0:
                facts["snapshot_left_behind"] = snap_dir
        return [Artifact(name, "tar", size, digest, raw, encrypted=bool(self.settings.age_recipients))], facts

    def restore_prometheus(
        self, directory: str, art: Artifact, facts: dict[str, t.Any], code: int = EXIT_RESTORE
    ) -> None:
        """Stop Prometheus, replace the content of its TSDB volume with the snapshot, start it, wait until ready."""
        info = self.container_info()
        tsdb = facts.get("tsdb_path") or self.tsdb_path(info)
        snapshot = facts.get("snapshot") or ""
        on_volume = any(
            tsdb == m.get("Destination") or tsdb.startswith(str(m.get("Destination")).rstrip("/") + "/")
            for m in info.get("Mounts") or []
        )
        if not on_volume or not snapshot:
            raise BackupError(
                code,
                "Prometheus's TSDB %s in %s is not on a volume (or the manifest names no snapshot): "
                "restore by hand: stop it, extract the archive, move the snapshot's blocks into "
                "the TSDB directory, start it" % (tsdb, self.spec.container),
            )
        helpers: list[str] = []

        def helper(script: str) -> str:
            body = {
                "Image": info.get("Image"),
                "Entrypoint": ["sh", "-c", script, tsdb, snapshot],
                "Cmd": [],
                "User": "0",
                "Labels": {"opsbook.backup.helper": self.spec.name},
                "HostConfig": {"VolumesFrom": [info["Id"]], "NetworkMode": "none"},
            }
            helpers.append(self.client.request_json("POST", "/containers/create", body=body)["Id"])
            return helpers[-1]

        def run(hid: str, what: str) -> None:
            self.client.request("POST", "/containers/%s/start" % hid)
            status = self.client.request_json("POST", "/containers/%s/wait" % hid, timeout=self.settings.timeout)
            if status.get("StatusCode") != 0:
                raise BackupError(
                    code, "restore of %s: %s failed (exit %s)" % (self.spec.container, what, status.get("StatusCode"))
                )

        self.client.stop_container(info["Id"], grace_s=60)
        try:
            clear = helper('set -e; find "$0" -mindepth 1 -maxdepth 1 -exec rm -rf {} +')
            run(clear, "emptying the TSDB directory")
            path = os.path.join(directory, art.name)
            proc, source = self._decompressor(path, art.encrypted)

            def chunks() -> t.Iterator[bytes]:
                yield from iter(source, b"")
                if proc.wait() != 0:
                    raise BackupError(code, "decompressing %s failed" % path)

            self.streams.put_archive(clear, tsdb, chunks(), art.raw_bytes)
            run(
                helper('set -e; for f in "$0/$1"/*; do if [ -e "$f" ]; then mv "$f" "$0"/; fi; done; rmdir "$0/$1"'),
                "moving the snapshot's blocks into place",
            )
        finally:
            for hid in helpers:
                try:
                    self.client.remove_container(hid, force=True)
                except DockerError:
                    pass
            self.client.request("POST", "/containers/%s/start" % info["Id"])
        ready = self.prometheus_url(self.container_info()) + "/-/ready"
        deadline = time.monotonic() + 120
        while True:
            try:
                self._prometheus_api(ready, method="GET", code=code)
                return
            except BackupError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # -- volumes -----------------------------------------------------------------------------------------

    def _volume_owners(self) -> list[dict[str, t.Any]]:
        return self.client.list_containers(all=True, filters={"volume": [self.spec.volume]})

    def _helper(self, read_only: bool) -> str:
        try:
            self.client.request_json("GET", "/volumes/%s" % quote(self.spec.volume, safe=""))
        except DockerNotFound as exc:
            raise BackupError(EXIT_DOCKER, "volume %s does not exist" % self.spec.volume) from exc
        image = self.spec.helper_image
        if not image:
            owners = self._volume_owners()
            if not owners:
                raise BackupError(EXIT_USAGE, "volume %s: no container uses it, set helper_image" % self.spec.volume)
            image = owners[0]["ImageID"]
        body = {
            "Image": image,
            "Cmd": ["true"],
            "Entrypoint": [],
            "Labels": {"opsbook.backup.helper": self.spec.name},
            "HostConfig": {
                "Binds": ["%s:/opsbook-volume%s" % (self.spec.volume, ":ro" if read_only else "")],
                "NetworkMode": "none",
            },
        }
        # Never started: the archive API reads and writes a created container's mounts.
        return self.client.request_json("POST", "/containers/create", body=body)["Id"]

    def _stoppable_owners(self) -> list[str]:
        ids = []
        for owner in self._volume_owners():
            if owner.get("State") != "running":
                continue
            wanted = self.spec.stop_owners
            if wanted is None:
                wanted = (owner.get("Labels") or {}).get("opsbook.backup.stop", "").lower() in ("1", "true", "yes")
            if wanted:
                ids.append(owner["Id"])
        return ids

    def _dump_volume(self, directory: str) -> tuple[list[Artifact], dict[str, t.Any]]:
        helper = self._helper(read_only=True)
        stopped = self._stoppable_owners()
        facts: dict[str, t.Any] = {"volume": self.spec.volume, "stopped": stopped}
        name = "volume.tar.zst" + (".age" if self.settings.age_recipients else "")
        path = os.path.join(directory, name)
        writer = self._writer(path)
        tail = [b""]

        def sink(data: bytes) -> None:
            tail[0] = (tail[0] + data)[-1024:]
            writer.write(data)

        try:
            for cid in stopped:
                self.client.stop_container(cid)
            raw = self.streams.get_archive(helper, "/opsbook-volume", sink)
            if raw < self.spec.plausible_bytes or _plausibility("tar", b"", tail[0]):
                raise BackupError(
                    EXIT_IMPLAUSIBLE, "archive of volume %s is %d bytes or cut off" % (self.spec.volume, raw)
                )
            size, digest = writer.finish()
            return [Artifact(name, "tar", size, digest, raw, encrypted=bool(self.settings.age_recipients))], facts
        except BaseException:
            writer.abort()
            raise
        finally:
            for cid in stopped:
                self.client.request("POST", "/containers/%s/start" % cid)
            self.client.remove_container(helper, force=True)

    # -- restore -----------------------------------------------------------------------------------------

    def _decompressor(self, path: str, encrypted: bool = False) -> tuple[t.Any, t.Callable[[], bytes]]:
        """zstd -d (after age -d for an encrypted artifact); returns the last process and a chunk reader."""
        binary = shutil.which(self.settings.zstd)
        if not binary:
            raise BackupError(
                EXIT_COMPRESS, "zstd not found (%s): install the zstd package on this host" % self.settings.zstd
            )
        if not encrypted:
            proc = subprocess.Popen(
                [binary, "-q", "-d", "-c", path],
                stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                stderr=subprocess.PIPE,
                bufsize=0,
            )
            return proc, lambda: proc.stdout.read(CHUNK)  # type: ignore[union-attr]
        age = shutil.which(self.settings.age)
        if not age:
            raise BackupError(EXIT_COMPRESS, "%s is encrypted and age is not installed on this host" % path)
        if not self.settings.age_identity or not os.path.isfile(self.settings.age_identity):
            raise BackupError(
                EXIT_USAGE,
                "%s is encrypted: set age_identity to the age identity (private key) file "
                "of one of its recipients (have: %r)" % (path, self.settings.age_identity),
            )
        decrypt = subprocess.Popen(
            [age, "-d", "-i", self.settings.age_identity, path],  # pylint: disable=consider-using-with
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

    def _feed(
        self, container: str, path: str, argv: list[str], env: dict[str, str], code: int, encrypted: bool = False
    ) -> StreamResult:
        proc, source = self._decompressor(path, encrypted)
        try:
            res = self.streams.exec_stream(container, argv, env=env, stdin_source=source, keep_stdout=64 * 1024)
        finally:
            if proc.poll() is None:
                proc.stdout.close()  # type: ignore[union-attr]
            rc = proc.wait()
        self._check(res, " ".join(argv[:2]), code, container)
        if rc != 0:
            raise BackupError(
                EXIT_COMPRESS,
                "decompressing %s exited with %s: %s" % (path, rc, proc.stderr.read(2000).decode(errors="replace")),
            )  # type: ignore[union-attr]
        return res

    def restore_artifact(
        self, directory: str, art: Artifact, container: str, env: dict[str, str], user: str, code: int = EXIT_RESTORE
    ) -> None:
        path = os.path.join(directory, art.name)
        if art.kind == "sql":
            self._feed(
                container, path, [self.mariadb_client(container), "-u", user, "--binary-mode"], env, code, art.encrypted
            )
        elif art.kind == "pg_globals":
            # Roles that exist already fail harmlessly; everything else must apply.
            res = self._feed(
                container, path, ["psql", "-U", user, "-X", "-q", "-d", "postgres"], env, code, art.encrypted
            )
            if res.stderr and b"already exists" not in res.stderr:
                raise BackupError(code, "globals in %s: %s" % (container, res.stderr.decode(errors="replace")[-2000:]))
        elif art.kind == "pg_custom":
            ident = '"%s"' % art.database.replace('"', '""')
            self.sql(container, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % ident, "postgres", env, user, code)
            self._feed(
                container,
                path,
                ["pg_restore", "-U", user, "--exit-on-error", "--create", "-d", "postgres"],
                env,
                code,
                art.encrypted,
            )
        else:
            raise BackupError(code, "artifact kind %s is restored by its component, not here" % art.kind)

    def _rdb_tar(
        self, directory: str, art: Artifact, filename: str, uid: int, gid: int
    ) -> tuple[t.Iterator[bytes], int]:
        info = tarfile.TarInfo(filename)
        info.size = art.raw_bytes
        info.uid, info.gid, info.mode, info.mtime = uid, gid, 0o644, int(time.time())
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        padding = (512 - art.raw_bytes % 512) % 512
        length = len(header) + art.raw_bytes + padding + 1024
        path = os.path.join(directory, art.name)

        def chunks() -> t.Iterator[bytes]:
            yield header
            proc, source = self._decompressor(path, art.encrypted)
            sent = 0
            for block in iter(source, b""):
                sent += len(block)
                yield block
            if proc.wait() != 0 or sent != art.raw_bytes:
                raise BackupError(
                    EXIT_RESTORE, "decompressing %s gave %d bytes, manifest says %d" % (path, sent, art.raw_bytes)
                )
            yield b"\0" * (padding + 1024)

        return chunks(), length

    def restore_redis(
        self, directory: str, art: Artifact, container: str, stop_start: bool = True, code: int = EXIT_RESTORE
    ) -> None:
        _user, env = self.credentials(container)
        if self.redis_config(container, env, "appendonly", code) == "yes":
            raise BackupError(
                code,
                "Redis in %s has appendonly yes: it would load its AOF, not the restored RDB. "
                "Restore by hand: stop, remove the appendonly dir/file, copy the RDB, start, "
                "CONFIG SET appendonly yes." % container,
            )
        rdir = self.redis_config(container, env, "dir", code)
        rfile = self.redis_config(container, env, "dbfilename", code)
        owner = self._check(self.streams.run(container, ["stat", "-c", "%u %g", rdir]), "stat", code, container).split()
        chunks, length = self._rdb_tar(directory, art, rfile, int(owner[0]), int(owner[1]))
        if stop_start:
            # Stopped first: a running Redis would overwrite the file on shutdown (SAVE) or the next BGSAVE.
            self.client.stop_container(container, grace_s=30)
        try:
            self.streams.put_archive(container, rdir, chunks, length)
        finally:
            if stop_start:  # started again even when the copy failed: the old data is better than none
                self.client.request("POST", "/containers/%s/start" % quote(container, safe=""))
        self.wait_ready(container, 60, code)

    def restore_volume(self, directory: str, art: Artifact, code: int = EXIT_RESTORE) -> dict[str, t.Any]:
        helper = self._helper(read_only=False)
        stopped = [o["Id"] for o in self._volume_owners() if o.get("State") == "running"]
        path = os.path.join(directory, art.name)
        try:
            for cid in stopped:
                self.client.stop_container(cid)
            proc, source = self._decompressor(path, art.encrypted)

            def strip_prefix() -> t.Iterator[bytes]:
                # The archive's top directory is opsbook-volume/: extract it at / of the helper.
                yield from iter(source, b"")
                if proc.wait() != 0:
                    raise BackupError(code, "zstd -d %s failed" % path)

            self.streams.put_archive(helper, "/", strip_prefix(), art.raw_bytes)
        finally:
            for cid in stopped:
                self.client.request("POST", "/containers/%s/start" % cid)
            self.client.remove_container(helper, force=True)
        return {"restarted": stopped}

    def wait_ready(self, container: str, timeout: float, code: int) -> None:
        """Until the server answers on TCP (init-time temporary servers listen on the socket only)."""
        _user, env = self.credentials(container)
        if self.spec.engine == "mariadb":
            argv = [
                self._tool(container, ("mariadb-admin", "mysqladmin")),
                "-u",
                _user or "root",
                "-h",
                "127.0.0.1",
                "--protocol=tcp",
                "ping",
            ]
        elif self.spec.engine == "postgres":
            argv = ["pg_isready", "-h", "127.0.0.1", "-U", _user or "postgres"]
        else:
            argv = ["redis-cli", "PING"]
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.streams.run(container, argv, env=env)
                if last.exit_code == 0 and b"LOADING" not in last.stdout:
                    return
            except BackupError as exc:
                last = exc  # type: ignore[assignment]
            time.sleep(0.3)
        raise BackupError(code, "%s did not become ready within %g s: %s" % (container, timeout, last))


# ------------------------------------------------------------------------------------------------------------
# Manifests, backups on disk, retention
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Manifest:
    id: str
    component: str
    type: str
    created: float
    duration_s: float
    artifacts: list[Artifact]
    facts: dict[str, t.Any] = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def size(self) -> int:
        return sum(a.bytes for a in self.artifacts)

    def to_dict(self) -> dict[str, t.Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, t.Any]) -> Manifest:
        return cls(
            id=data["id"],
            component=data["component"],
            type=data["type"],
            created=float(data["created"]),
            duration_s=float(data.get("duration_s", 0)),
            artifacts=[Artifact(**a) for a in data.get("artifacts", [])],
            facts=data.get("facts") or {},
            schema=int(data.get("schema", SCHEMA)),
        )


class Store:
    """The backups of one component under <dest>/<component>/."""

    def __init__(self, dest: str, component: str):
        self.root = os.path.join(dest, component)

    def path(self, backup_id: str) -> str:
        return os.path.join(self.root, backup_id)

    def manifests(self) -> list[Manifest]:
        """Committed backups, oldest first."""
        found = []
        if not os.path.isdir(self.root):
            return found
        for entry in sorted(os.listdir(self.root)):
            mpath = os.path.join(self.root, entry, MANIFEST)
            if os.path.isfile(mpath):
                try:
                    with open(mpath, encoding="utf-8") as handle:
                        found.append(Manifest.from_dict(json.load(handle)))
                except (ValueError, KeyError, TypeError, OSError):
                    continue  # an unreadable manifest commits nothing; retention leaves it alone
        return sorted(found, key=lambda m: (m.created, m.id))

    def get(self, backup_id: str | None = None) -> Manifest:
        manifests = self.manifests()
        if not manifests:
            raise BackupError(EXIT_VERIFY, "no committed backup (no %s) under %s" % (MANIFEST, self.root))
        if not backup_id or backup_id == "latest":
            return manifests[-1]
        for m in manifests:
            if m.id == backup_id:
                return m
        raise BackupError(
            EXIT_VERIFY,
            "backup %s not found under %s (have: %s)" % (backup_id, self.root, ", ".join(m.id for m in manifests[-5:])),
        )

    def verify(self, manifest: Manifest) -> list[str]:
        """Problems of a backup (empty when every artifact has its size and sha256)."""
        problems = []
        directory = self.path(manifest.id)
        for art in manifest.artifacts:
            path = os.path.join(directory, art.name)
            try:
                size = os.path.getsize(path)
                if size != art.bytes:
                    problems.append("%s: size %d, manifest says %d" % (path, size, art.bytes))
                    continue
                digest = file_sha256(path)
            except OSError as exc:
                problems.append("%s: %s" % (path, exc.strerror))
                continue
            if digest != art.sha256:
                problems.append("%s: sha256 %s, manifest says %s" % (path, digest, art.sha256))
        return problems

    def require_verified(self, manifest: Manifest) -> None:
        problems = self.verify(manifest)
        if problems:
            raise BackupError(
                EXIT_VERIFY,
                "backup %s of %s fails verification, refusing to restore it: %s"
                % (manifest.id, manifest.component, "; ".join(problems)),
                {"problems": problems},
            )


def select_keep(
    manifests: list[Manifest], keep_last: int, keep_daily: int, keep_weekly: int, newest_verified: str | None
) -> set[str]:
    """Ids to keep: the newest keep_last, the newest of each of the last keep_daily days and keep_weekly ISO
    weeks that have backups, and always the newest verified backup."""
    newest_first = sorted(manifests, key=lambda m: (m.created, m.id), reverse=True)
    keep = {m.id for m in newest_first[:keep_last]}
    for count, key in ((keep_daily, "%Y-%m-%d"), (keep_weekly, "%G-W%V")):
        seen: set[str] = set()
        for m in newest_first:
            bucket = datetime.datetime.fromtimestamp(m.created, datetime.UTC).strftime(key)
            if bucket not in seen and len(seen) < count:
                seen.add(bucket)
                keep.add(m.id)
    if newest_verified:
        keep.add(newest_verified)
    return keep


def prune(store: Store, spec: ComponentSpec, newest_verified: str | None) -> list[str]:
    """Delete the backups retention does not keep: only files their manifest lists, then the empty directory.

    The manifest is renamed to manifest.pruning.json first (uncommitted but still listing its files), so an
    interrupted prune is finished by the next one instead of leaving a backup that fails verification.
    """
    removed = []
    if os.path.isdir(store.root):
        for entry in sorted(os.listdir(store.root)):
            if os.path.isfile(os.path.join(store.root, entry, PRUNING)):
                _delete_listed(store.path(entry), PRUNING)
    manifests = store.manifests()
    keep = select_keep(manifests, spec.keep_last, spec.keep_daily, spec.keep_weekly, newest_verified)
    for m in manifests:
        if m.id in keep:
            continue
        directory = store.path(m.id)
        os.rename(os.path.join(directory, MANIFEST), os.path.join(directory, PRUNING))
        fsync_dir(directory)
        _delete_listed(directory, PRUNING)
        removed.append(m.id)
    return removed


def _delete_listed(directory: str, manifest_name: str) -> None:
    mpath = os.path.join(directory, manifest_name)
    with open(mpath, encoding="utf-8") as handle:
        data = json.load(handle)
    for art in data.get("artifacts", []):
        name = os.path.basename(art["name"])  # never follow a path out of the directory
        _unlink_quiet(os.path.join(directory, name))
    os.unlink(mpath)
    try:
        os.rmdir(directory)  # only when nothing else is in it
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------------------
# State and metrics
# ------------------------------------------------------------------------------------------------------------


def load_state(store: Store) -> dict[str, t.Any]:
    try:
        with open(os.path.join(store.root, STATE), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def save_state(store: Store, state: dict[str, t.Any]) -> None:
    os.makedirs(store.root, exist_ok=True)
    write_json_atomic(os.path.join(store.root, STATE), state)


METRICS = (
    (
        "opsbook_backup_last_attempt_timestamp_seconds",
        "gauge",
        "Unix time the last backup attempt ended.",
        "last_attempt",
    ),
    (
        "opsbook_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful backup.",
        "last_success",
    ),
    ("opsbook_backup_last_exit_code", "gauge", "Exit code of the last backup attempt (0 = success).", "last_exit_code"),
    ("opsbook_backup_last_size_bytes", "gauge", "Size of the last successful backup (all artifacts).", "last_size"),
    ("opsbook_backup_last_duration_seconds", "gauge", "Duration of the last successful backup.", "last_duration"),
    ("opsbook_backup_verify_ok", "gauge", "1 when the newest backup verified (sha256 of every artifact).", "verify_ok"),
    ("opsbook_backup_restore_drill_ok", "gauge", "1 when the last restore drill passed.", "drill_ok"),
    ("opsbook_backup_restore_drill_duration_seconds", "gauge", "Duration of the last restore drill.", "drill_duration"),
    ("opsbook_backup_restore_drill_timestamp_seconds", "gauge", "Unix time of the last restore drill.", "drill_last"),
    ("opsbook_backup_count", "gauge", "Committed backups kept for the component.", "count"),
)


def render_metrics(component: str, kind: str, state: dict[str, t.Any]) -> str:
    labels = '{component="%s",type="%s"}' % (component.replace('"', ""), kind)
    lines = []
    for name, mtype, help_text, key in METRICS:
        if state.get(key) is None:
            continue
        lines.append("# HELP %s %s" % (name, help_text))
        lines.append("# TYPE %s %s" % (name, mtype))
        value = state[key]
        lines.append("%s%s %s" % (name, labels, int(value) if isinstance(value, bool) else value))
    return "\n".join(lines) + "\n"


def write_metrics(settings: Settings, spec: ComponentSpec, state: dict[str, t.Any]) -> str | None:
    """<metrics_dir>/opsbook_backup_<component>.prom, atomically (node_exporter must never read half a file)."""
    if not settings.metrics_dir:
        return None
    os.makedirs(settings.metrics_dir, exist_ok=True)
    path = os.path.join(settings.metrics_dir, "opsbook_backup_%s.prom" % spec.name)
    write_atomic(path, render_metrics(spec.name, spec.type, state).encode(), mode=0o644)
    return path


# ------------------------------------------------------------------------------------------------------------
# The operations: backup, verify, restore, drill
# ------------------------------------------------------------------------------------------------------------


@dataclass
class BackupResult:
    component: str
    id: str = ""
    path: str = ""
    size: int = 0
    raw_size: int = 0
    duration_s: float = 0.0
    verify_s: float = 0.0  # reading every artifact back and hashing it
    artifacts: list[dict[str, t.Any]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    metrics_file: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, t.Any]:
        return asdict(self)


def preflight_space(store: Store, settings: Settings, state: dict[str, t.Any]) -> dict[str, int]:
    os.makedirs(store.root, exist_ok=True)
    last = int(state.get("last_size") or 0)
    if not last:
        manifests = store.manifests()
        last = manifests[-1].size if manifests else 0
    needed = int(last * (1 + settings.space_margin)) + settings.min_free_bytes
    free = _free_bytes(store.root)
    if free < needed:
        raise BackupError(
            EXIT_DISK,
            "not enough space for a backup in %s: %d bytes free, %d needed (last backup %d "
            "bytes + %d%% margin + %d reserve); older backups are untouched"
            % (store.root, free, needed, last, settings.space_margin * 100, settings.min_free_bytes),
            {"path": store.root, "free_bytes": free, "needed_bytes": needed},
        )
    return {"free": free, "needed": needed}


def plan_backup(spec: ComponentSpec, settings: Settings) -> dict[str, t.Any]:
    """What a backup would do, without writing anything (check mode)."""
    store = Store(settings.dest, spec.name)
    state = load_state(store)
    manifests = store.manifests()
    last = int(state.get("last_size") or (manifests[-1].size if manifests else 0))
    free = _free_bytes(settings.dest) if os.path.isdir(settings.dest) else None
    return {
        "component": spec.name,
        "type": spec.type,
        "target": store.root,
        "container": spec.container,
        "volume": spec.volume,
        "existing_backups": [m.id for m in manifests],
        "last_size": last,
        "free_bytes": free,
        "keep_last": spec.keep_last,
        "keep_daily": spec.keep_daily,
        "keep_weekly": spec.keep_weekly,
    }


def run_backup(spec: ComponentSpec, settings: Settings, client: DockerClient | None = None) -> BackupResult:
    """Back up one component under its lock; metrics record the attempt whatever the outcome."""
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with JobLock(os.path.join(store.root, ".lock")):
        state = load_state(store)
        started = time.time()
        result = BackupResult(component=spec.name)
        try:
            _do_backup(spec, settings, store, state, result, client)
            state.update(
                last_exit_code=EXIT_OK,
                last_success=round(time.time(), 3),
                last_size=result.size,
                last_duration=round(result.duration_s, 3),
                verify_ok=1,
                last_id=result.id,
            )
        except BackupError as exc:
            state["last_exit_code"] = exc.exit_code
            if exc.exit_code == EXIT_VERIFY:
                state["verify_ok"] = 0
            if exc.exit_code == EXIT_RETENTION:
                state.update(
                    last_success=round(time.time(), 3),
                    last_size=result.size,
                    last_duration=round(result.duration_s, 3),
                    verify_ok=1,
                    last_id=result.id,
                )
            raise
        except Exception:
            state["last_exit_code"] = EXIT_INTERNAL
            raise
        finally:
            state["last_attempt"] = round(time.time(), 3)
            state["attempt_duration"] = round(time.time() - started, 3)
            state["count"] = len(store.manifests())
            try:
                save_state(store, state)
                result.metrics_file = write_metrics(settings, spec, state)
            except (OSError, BackupError) as exc:  # a full disk must not hide the real error
                result.warnings.append("state/metrics not written: %s" % exc)
        return result


def _do_backup(
    spec: ComponentSpec,
    settings: Settings,
    store: Store,
    state: dict[str, t.Any],
    result: BackupResult,
    client: DockerClient | None,
) -> None:
    preflight_space(store, settings, state)
    engine = Engine(spec, settings, client)
    started = time.time()
    backup_id = utc_id(started)
    if os.path.exists(store.path(backup_id)):
        time.sleep(1.0)  # one per second: ids sort by time
        started = time.time()
        backup_id = utc_id(started)
    directory = store.path(backup_id)
    os.makedirs(directory)
    artifacts: list[Artifact] = []
    try:
        artifacts, facts = engine.dump(directory)
        if not artifacts:
            raise BackupError(EXIT_IMPLAUSIBLE, "component %s produced no artifact (no database to dump?)" % spec.name)
        manifest = Manifest(backup_id, spec.name, spec.type, started, round(time.time() - started, 3), artifacts, facts)
        write_json_atomic(os.path.join(directory, MANIFEST), manifest.to_dict())  # the commit
    except BaseException:
        for art in artifacts:
            _unlink_quiet(os.path.join(directory, art.name))
        for name in os.listdir(directory):
            if name.endswith(".partial"):
                _unlink_quiet(os.path.join(directory, name))
        try:
            os.rmdir(directory)
        except OSError:
            pass
        raise
    result.id, result.path, result.size = backup_id, directory, manifest.size
    result.raw_size = sum(a.raw_bytes for a in artifacts)
    result.duration_s = manifest.duration_s
    result.artifacts = [asdict(a) for a in artifacts]
    # Read back what was written: the newest *verified* backup is what retention protects.
    t0 = time.monotonic()
    problems = store.verify(manifest)
    result.verify_s = round(time.monotonic() - t0, 3)
    if problems:
        raise BackupError(
            EXIT_VERIFY, "backup %s does not verify right after writing: %s" % (backup_id, "; ".join(problems))
        )
    try:
        result.pruned = prune(store, spec, backup_id)
    except OSError as exc:
        raise BackupError(EXIT_RETENTION, "backup %s succeeded but retention failed: %s" % (backup_id, exc)) from exc
    result.kept = [m.id for m in store.manifests()]


def newest_verified(store: Store) -> Manifest | None:
    for m in reversed(store.manifests()):
        if not store.verify(m):
            return m
    return None


def require_decryptable(settings: Settings, m: Manifest) -> None:
    """Refuse before anything is stopped when an encrypted backup cannot be decrypted here."""
    if not any(a.encrypted for a in m.artifacts):
        return
    if not settings.age_identity or not os.path.isfile(settings.age_identity):
        raise BackupError(
            EXIT_USAGE,
            "backup %s of %s is encrypted to age recipients: set age_identity to an "
            "identity file of one of them (have: %r); nothing was touched" % (m.id, m.component, settings.age_identity),
        )
    if not shutil.which(settings.age):
        raise BackupError(EXIT_COMPRESS, "backup %s is encrypted and age is not installed on this host" % m.id)


def plan_restore(spec: ComponentSpec, settings: Settings, backup_id: str | None = None) -> dict[str, t.Any]:
    store = Store(settings.dest, spec.name)
    m = store.get(backup_id)
    problems = store.verify(m)
    return {
        "component": spec.name,
        "backup_id": m.id,
        "created": m.created,
        "verified": not problems,
        "problems": problems,
        "into": spec.container or spec.volume,
        "artifacts": [a.name for a in m.artifacts],
        "steps": _restore_steps(spec, m),
    }


def _restore_steps(spec: ComponentSpec, m: Manifest) -> list[str]:
    steps = ["verify sha256 and size of %d artifact(s)" % len(m.artifacts)]
    for a in m.artifacts:
        if a.kind == "sql":
            steps.append("drop and recreate database %s from %s" % (a.database, a.name))
        elif a.kind == "pg_custom":
            steps.append("DROP DATABASE %s WITH (FORCE), pg_restore --create from %s" % (a.database, a.name))
        elif a.kind == "pg_globals":
            steps.append("apply roles and tablespaces from %s" % a.name)
        elif a.kind == "rdb":
            steps.append("stop %s, replace its RDB file, start it" % spec.container)
        elif a.kind == "tar" and spec.type == "prometheus":
            steps.append(
                "stop %s, replace its TSDB with snapshot %s from %s, start it"
                % (spec.container, m.facts.get("snapshot"), a.name)
            )
        elif a.kind == "tar":
            steps.append("stop the containers using volume %s, extract %s over it, start them" % (spec.volume, a.name))
    return steps


def run_restore(
    spec: ComponentSpec,
    settings: Settings,
    backup_id: str | None = None,
    client: DockerClient | None = None,
    databases: list[str] | None = None,
    project_lock: str | None = None,
) -> dict[str, t.Any]:
    """Verify first (refuse on any mismatch), then restore every artifact into the component's container.

    project_lock: the project's lock file (the one upgrade and rollback take), held as well when given.
    """
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with JobLock(project_lock) if project_lock else _NoLock(), JobLock(os.path.join(store.root, ".lock")):
        m = store.get(backup_id)
        store.require_verified(m)
        require_decryptable(settings, m)
        started = time.monotonic()
        engine = Engine(spec, settings, client)
        directory = store.path(m.id)
        restored = []
        if spec.type == "volume":
            engine.restore_volume(directory, m.artifacts[0])
            restored.append(m.artifacts[0].name)
        elif spec.type == "redis":
            engine.container_info()
            engine.restore_redis(directory, m.artifacts[0], spec.container)
            restored.append(m.artifacts[0].name)
        elif spec.type == "prometheus":
            engine.restore_prometheus(directory, m.artifacts[0], m.facts)
            restored.append(m.artifacts[0].name)
        else:
            user, env = engine.credentials()
            for art in m.artifacts:
                if databases and art.kind != "pg_globals" and art.database not in databases:
                    continue
                engine.restore_artifact(directory, art, spec.container, env, user)
                restored.append(art.name)
        return {
            "component": spec.name,
            "backup_id": m.id,
            "restored": restored,
            "duration_s": round(time.monotonic() - started, 3),
        }


def run_drill(
    spec: ComponentSpec, settings: Settings, backup_id: str | None = None, client: DockerClient | None = None
) -> dict[str, t.Any]:
    """Restore the newest (or given) backup into a throwaway container of the same image and check it."""
    store = Store(settings.dest, spec.name)
    os.makedirs(store.root, exist_ok=True)
    with JobLock(os.path.join(store.root, ".lock")):
        state = load_state(store)
        started = time.monotonic()
        result: dict[str, t.Any] = {"component": spec.name}
        try:
            m = store.get(backup_id)
            result["backup_id"] = m.id
            store.require_verified(m)
            require_decryptable(settings, m)
            if spec.type in ("volume", "prometheus"):
                raise BackupError(
                    EXIT_USAGE,
                    "restore drills exist for mariadb, mysql, postgres and redis; "
                    "a %s backup is checked by verify" % spec.type,
                )
            result.update(_drill(spec, settings, store, m, client))
            state.update(drill_ok=1)
        except BackupError:
            state.update(drill_ok=0)
            raise
        finally:
            state["drill_duration"] = result["duration_s"] = round(time.monotonic() - started, 3)
            state["drill_last"] = round(time.time(), 3)
            try:
                save_state(store, state)
                write_metrics(settings, spec, state)
            except (OSError, BackupError):
                pass
        return result


def _drill(
    spec: ComponentSpec, settings: Settings, store: Store, m: Manifest, client: DockerClient | None
) -> dict[str, t.Any]:
    engine = Engine(spec, settings, client)
    image = m.facts.get("image_id") or m.facts.get("image")
    password = secrets.token_hex(16)
    env = {"mariadb": {"MARIADB_ROOT_PASSWORD": password}, "postgres": {"POSTGRES_PASSWORD": password}}.get(
        spec.engine, {}
    )
    name = "%s%s-%s" % (settings.drill_prefix, spec.name, secrets.token_hex(3))
    body = {
        "Image": image,
        "Env": ["%s=%s" % kv for kv in env.items()],
        "Labels": {"opsbook.backup.drill": spec.name},
        "HostConfig": {"NetworkMode": "none"},
    }
    try:
        cid = engine.client.request_json("POST", "/containers/create", query={"name": name}, body=body)["Id"]
    except DockerError as exc:
        raise BackupError(EXIT_DRILL, "cannot create drill container from %s: %s" % (image, exc)) from exc
    drill_spec = ComponentSpec(**{**asdict(spec), "container": name, "password": password, "user": "", "databases": []})
    drill = Engine(drill_spec, settings, engine.client)
    report: dict[str, t.Any] = {"container": name, "image": image}
    try:
        directory = store.path(m.id)
        if spec.engine == "redis":
            # Copied in before the first start, so the server loads it like after a reboot.
            drill_rdb = m.facts.get("rdb_path", "/data/dump.rdb")
            rdir, rfile = os.path.split(drill_rdb)
            chunks, length = drill._rdb_tar(directory, m.artifacts[0], rfile, 0, 0)  # pylint: disable=protected-access
            drill.streams.put_archive(cid, rdir, chunks, length)
            engine.client.request("POST", "/containers/%s/start" % cid)
            drill.wait_ready(name, settings.drill_timeout, EXIT_DRILL)
            _u, denv = drill.credentials(name)
            size = int(drill._unquote(drill._redis(name, denv, "DBSIZE", code=EXIT_DRILL)))  # pylint: disable=protected-access
            report.update(
                dbsize=size, expected_dbsize=m.facts.get("dbsize"), matches_source=size == m.facts.get("dbsize")
            )
            if m.facts.get("dbsize") and not size:
                raise BackupError(
                    EXIT_DRILL,
                    "drill of %s: the restored Redis is empty, the source had %s keys" % (m.id, m.facts.get("dbsize")),
                )
            return report
        engine.client.request("POST", "/containers/%s/start" % cid)
        drill.wait_ready(name, settings.drill_timeout, EXIT_DRILL)
        user, denv = drill.credentials(name)
        tables: dict[str, t.Any] = {}
        mismatches = []
        for art in m.artifacts:
            drill.restore_artifact(directory, art, name, denv, user, EXIT_DRILL)
            if not art.database:
                continue
            counts = drill.table_counts(name, art.database, denv, user, EXIT_DRILL)
            expected = (m.facts.get("tables") or {}).get(art.database, {})
            missing = sorted(set(expected) - set(counts))
            if missing:
                raise BackupError(
                    EXIT_DRILL,
                    "drill of %s: tables missing after restore in %s: %s" % (m.id, art.database, ", ".join(missing)),
                )
            entry: dict[str, t.Any] = {"counts": counts}
            if spec.engine == "mariadb":
                entry["checksums"] = drill.table_checksums(name, art.database, counts, denv, user, EXIT_DRILL)
                src = (m.facts.get("checksums") or {}).get(art.database, {})
                mismatches += [
                    "%s.%s" % (art.database, k) for k, v in entry["checksums"].items() if k in src and src[k] != v
                ]
            if expected:
                mismatches += ["%s.%s" % (art.database, k) for k, v in counts.items() if expected.get(k) != v]
            tables[art.database] = entry
        # Counts are taken before the (transactionally consistent) dump starts: on a busy database they may
        # differ by the writes in between, so a difference is reported, not failed.
        report.update(tables=tables, matches_source=not mismatches, mismatches=sorted(set(mismatches)))
        return report
    finally:
        try:
            engine.client.remove_container(cid, force=True, volumes=True)
        except DockerError:
            pass


# ------------------------------------------------------------------------------------------------------------
# Command line (cron)
# ------------------------------------------------------------------------------------------------------------


def load_config(path: str) -> tuple[Settings, dict[str, ComponentSpec]]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BackupError(EXIT_USAGE, "cannot read config %s: %s" % (path, exc)) from exc
    known = set(Settings.__dataclass_fields__)  # pylint: disable=no-member
    settings = Settings(**{k: v for k, v in data.items() if k in known})
    components = {name: ComponentSpec.from_dict(name, spec) for name, spec in (data.get("components") or {}).items()}
    return settings, components


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="opsbook-backup",
        description="Checksummed, verified backups of Docker "
        "databases and volumes (exit codes: see the module docstring).",
    )
    parser.add_argument("--config", default="/etc/opsbook/backup.json")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--jitter", type=float, default=0.0, help="sleep a random 0..N seconds first")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="sleep exactly N seconds first (cron: the role's stable per-host jitter)",
    )
    parser.add_argument("--log", default="", help="append one line per run (time, action, exit code, result) here")
    parser.add_argument("action", choices=("backup", "verify", "restore", "drill", "list", "metrics"))
    parser.add_argument("component")
    parser.add_argument("--backup-id", default=None)
    args = parser.parse_args(argv)
    code, summary = _run_cli(args)
    if args.log:
        _log_line(args.log, "%s %s %s exit=%d %s" % (utc_id(), args.action, args.component, code, summary))
    return code


def _log_line(path: str, line: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line.replace("\n", " ") + "\n")
    except OSError as exc:
        sys.stderr.write("opsbook-backup: cannot append to log %s: %s\n" % (path, exc))


def _run_cli(args: argparse.Namespace) -> tuple[int, str]:
    """Run one action; returns the exit code and a one-line summary for the log."""
    try:
        settings, components = load_config(args.config)
        if args.component not in components:
            raise BackupError(
                EXIT_USAGE,
                "component %s is not in %s (have: %s)"
                % (args.component, args.config, ", ".join(sorted(components)) or "none"),
            )
        spec = components[args.component]
        if args.delay > 0:
            time.sleep(args.delay)
        if args.jitter > 0:
            time.sleep(secrets.randbelow(int(args.jitter * 1000) + 1) / 1000.0)
        store = Store(settings.dest, spec.name)
        if args.action == "backup":
            out: t.Any = run_backup(spec, settings).to_dict()
        elif args.action == "verify":
            m = store.get(args.backup_id)
            problems = store.verify(m)
            state = load_state(store)
            state["verify_ok"] = 0 if problems else 1
            save_state(store, state)
            write_metrics(settings, spec, state)
            store.require_verified(m)
            out = {"backup_id": m.id, "verified": True}
        elif args.action == "restore":
            out = run_restore(spec, settings, args.backup_id)
        elif args.action == "drill":
            out = run_drill(spec, settings, args.backup_id)
        elif args.action == "metrics":
            out = {"metrics_file": write_metrics(settings, spec, load_state(store))}
        else:
            out = [{"id": m.id, "size": m.size, "problems": store.verify(m)} for m in store.manifests()]
        sys.stdout.write(
            (json.dumps(out, indent=2, sort_keys=True) if args.json else json.dumps(out, sort_keys=True)) + "\n"
        )
        if isinstance(out, dict) and out.get("id"):
            return EXIT_OK, "ok id=%s size=%s duration_s=%s pruned=%s" % (
                out["id"],
                out.get("size"),
                out.get("duration_s"),
                ",".join(out.get("pruned") or []) or "-",
            )
        return EXIT_OK, "ok " + json.dumps(out, sort_keys=True)[:300]
    except BackupError as exc:
        sys.stderr.write("opsbook-backup: %s: %s\n" % (exc.failure_class, exc.message))
        return exc.exit_code, "%s: %s" % (exc.failure_class, exc.message)
    except DockerError as exc:
        sys.stderr.write("opsbook-backup: docker: %s\n" % exc)
        return EXIT_DOCKER, "docker: %s" % exc
    except Exception as exc:  # pylint: disable=broad-except
        traceback.print_exc()
        return EXIT_INTERNAL, "internal: %r" % exc


if __name__ == "__main__":
    raise SystemExit(main())
