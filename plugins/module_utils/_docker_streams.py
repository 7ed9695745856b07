# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Streaming Docker exec (stdin from a source, stdout into a sink) and the archive API, chunk by chunk.

Private to this collection: not a public API, it may change in any release.

Built on the public methods of ``_docker.DockerClient`` only (``exec_inspect``, ``hijack`` for the upgraded exec
connection, ``open_stream`` for archives): this file opens no socket and builds no connection of its own. Backups
use it so that a dump of many gigabytes goes from the container to zstd without ever being held in memory.
Standard library only: the backup program runs it on hosts without Ansible.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import socket
import threading
import time
import typing as t
from dataclasses import dataclass
from urllib.parse import quote

from ansible_collections.opsbook.stack.plugins.module_utils._docker import (
    STREAM_STDERR,
    DockerClient,
    DockerConnectionError,
    DockerTimeout,
)

CHUNK = 1024 * 1024
STDERR_LIMIT = 64 * 1024
HEAD_BYTES = 64
TAIL_BYTES = 256
# The stream can end a moment before the engine records the exit code.
SETTLE_S = 10.0


@dataclass
class StreamResult:
    """Outcome of a streamed exec: the exit code, how much stdout went to the sink, its first and last bytes."""

    exit_code: int | None
    stdout_bytes: int
    head: bytes
    tail: bytes
    stderr: bytes
    stdout: bytes = b""  # kept only when asked (small outputs)


class _RawReader:
    """Reads an upgraded connection: the bytes read past the answer's header first, then the socket."""

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


class _Collector:
    """Keeps what a caller wants to know about stdout (size, head, tail, a bounded copy) and stderr."""

    def __init__(self, sink: t.Callable[[bytes], None] | None, keep_stdout: int):
        self.sink = sink
        self.keep_stdout = keep_stdout
        self.total = 0
        self.head = b""
        self.tail = b""
        self.kept = bytearray()
        self.stderr = bytearray()

    def feed(self, stream: int, data: bytes) -> None:
        if stream == STREAM_STDERR:
            if len(self.stderr) < STDERR_LIMIT:
                self.stderr.extend(data[: STDERR_LIMIT - len(self.stderr)])
            return
        if self.total < HEAD_BYTES:
            self.head = (self.head + data)[:HEAD_BYTES]
        self.total += len(data)
        self.tail = (self.tail + data)[-TAIL_BYTES:] if len(data) < TAIL_BYTES else data[-TAIL_BYTES:]
        if self.keep_stdout and len(self.kept) < self.keep_stdout:
            self.kept.extend(data[: self.keep_stdout - len(self.kept)])
        if self.sink is not None:
            self.sink(data)


def _demux(reader: _RawReader, collector: _Collector) -> None:
    """Frames of 8 header bytes (stream, 0, 0, 0, big-endian length) and their payload, until the stream ends."""
    while True:
        frame = reader.read_exact(8)
        if len(frame) < 8:
            return
        stream = frame[0]
        remaining = int.from_bytes(frame[4:8], "big")
        while remaining:
            data = reader.read(min(remaining, CHUNK))
            if not data:
                return
            remaining -= len(data)
            collector.feed(stream, data)


def _start_pump(sock: socket.socket, source: t.Callable[[], bytes], errors: list[BaseException]) -> threading.Thread:
    """Send source() chunks (until b"") as the command's stdin, then half-close so it sees EOF."""

    def pump() -> None:
        try:
            for block in iter(source, b""):
                sock.sendall(block)
        except BaseException as exc:  # pylint: disable=broad-except
            errors.append(exc)
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    writer = threading.Thread(target=pump, daemon=True)
    writer.start()
    return writer


def settled_exit_code(client: DockerClient, exec_id: str, settle_s: float = SETTLE_S) -> int | None:
    deadline = time.monotonic() + settle_s
    while True:
        info = client.exec_inspect(exec_id)
        if not info.get("Running") or time.monotonic() > deadline:
            return info.get("ExitCode")
        time.sleep(0.05)


def exec_stream(
    client: DockerClient,
    container: str,
    command: list[str],
    env: dict[str, str] | None = None,
    stdout_sink: t.Callable[[bytes], None] | None = None,
    stdin_source: t.Callable[[], bytes] | None = None,
    keep_stdout: int = 0,
    user: str = "",
    timeout: float = 3600.0,
) -> StreamResult:
    """Run command in container; stdout goes to stdout_sink chunk by chunk, stdin comes from stdin_source
    (called until it returns b""). timeout is per read: no byte for that long raises DockerTimeout.

    Errors of the engine are the client's (DockerNotFound for a missing container, ...); an exception of
    stdin_source is raised again after the stream ended, except a broken pipe (the command stopped reading).
    """
    exec_id = client.exec_create(container, command, env=env, user=user or None, stdin=stdin_source is not None)
    writer: threading.Thread | None = None
    writer_errors: list[BaseException] = []
    collector = _Collector(stdout_sink, keep_stdout)
    sock, leftover = client.hijack("/exec/%s/start" % quote(exec_id, safe=""), {"Detach": False, "Tty": False}, timeout)
    try:
        if stdin_source is not None:
            writer = _start_pump(sock, stdin_source, writer_errors)
        _demux(_RawReader(sock, leftover), collector)
    except TimeoutError as exc:
        raise DockerTimeout("%s in %s: no output for %g s (hung?)" % (command[0], container, timeout)) from exc
    except OSError as exc:
        raise DockerConnectionError("exec stream of %s in %s broke: %s" % (command[0], container, exc)) from exc
    finally:
        sock.close()
        if writer is not None:
            writer.join(5)
    exit_code = settled_exit_code(client, exec_id)
    if writer_errors and not isinstance(writer_errors[0], (BrokenPipeError, ConnectionResetError)):
        raise writer_errors[0]
    return StreamResult(
        exit_code, collector.total, collector.head, collector.tail, bytes(collector.stderr), bytes(collector.kept)
    )


def get_archive(
    client: DockerClient, container: str, path: str, sink: t.Callable[[bytes], None], timeout: float = 3600.0
) -> int:
    """Stream the tar of path in container (running or only created) into sink; returns the byte count."""
    total = 0
    url = "/containers/%s/archive" % quote(container, safe="")
    with client.open_stream("GET", url, query={"path": path}, timeout=timeout) as resp:
        while True:
            data = resp.read1(CHUNK)
            if not data:
                return total
            total += len(data)
            sink(data)


def put_archive(
    client: DockerClient,
    container: str,
    path: str,
    chunks: t.Iterable[bytes],
    length: int,
    timeout: float = 3600.0,
) -> None:
    """Extract a tar of exactly length bytes, given as chunks, at path in container (running or not)."""
    url = "/containers/%s/archive" % quote(container, safe="")
    headers = {"Content-Type": "application/x-tar", "Content-Length": str(length)}
    with client.open_stream("PUT", url, query={"path": path}, data=chunks, headers=headers, timeout=timeout) as resp:
        resp.read()


__all__ = ["StreamResult", "exec_stream", "get_archive", "put_archive", "settled_exit_code"]
