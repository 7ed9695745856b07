# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""A small Docker Engine API client built on the standard library only.

Private to this collection: not a public API, it may change in any release.

Target hosts have the Docker Engine but neither the docker Python SDK nor, always, the docker CLI, so the
modules talk to the engine's HTTP API directly: ``http.client`` over an AF_UNIX socket (or plain TCP).
Only what the collection needs is here: version negotiation, container inspect/list/logs/stop/remove/create/
start/wait, images, volumes, exec create/start/inspect with demultiplexing of the stdout/stderr stream, and the
two raw transports that ``_docker_streams.py`` builds streaming exec and archives on (``open_stream``, ``hijack``).
This is the only file of the collection that opens the Engine's socket.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import contextlib
import http.client
import json
import socket
import time
import typing as t
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Used when /version cannot be asked. Docker Engine 20.10 speaks 1.41; everything used here exists since 1.25.
DEFAULT_API_VERSION = "1.41"
# The newest API version this client was written against; a newer engine is asked for this one.
MAX_API_VERSION = "1.43"
# Output kept per exec stream or log stream; health check commands print little, a runaway one must not
# exhaust the module's memory.
DEFAULT_OUTPUT_LIMIT = 1024 * 1024

STREAM_STDIN = 0
STREAM_STDOUT = 1
STREAM_STDERR = 2


class DockerError(Exception):
    """Base class of every error raised by this client."""


class DockerConnectionError(DockerError):
    """The engine could not be reached: socket missing, permission denied, nothing listening, timeout."""


class DockerTimeout(DockerConnectionError):
    """A request did not complete within its timeout."""


class DockerAPIError(DockerError):
    """The engine answered with an HTTP error status."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "", explanation: str | None = None):
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        # The engine's own words, e.g. "Container 4f1c... is not running"
        self.explanation = explanation if explanation is not None else message
        super().__init__(message)


class DockerNotFound(DockerAPIError):
    """404: no such container, exec instance or image."""


class DockerConflict(DockerAPIError):
    """409: for example exec into a container that is not running."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def negotiate_api_version(server_version: str, client_max: str = MAX_API_VERSION) -> str:
    """The API version both sides speak: the lower of the server's and this client's newest."""
    try:
        if _version_tuple(server_version) < _version_tuple(client_max):
            return server_version
    except ValueError:
        return DEFAULT_API_VERSION
    return client_max


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection whose transport is a unix domain socket."""

    def __init__(self, socket_path: str, timeout: float | None = None):
        # The host name only ends up in the Host header; the engine ignores it.
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class StreamDemuxer:
    """Splits Docker's multiplexed attach/exec/logs stream into stdout and stderr.

    Without a TTY the engine frames the output: an 8-byte header (stream type, three zero bytes, big-endian
    payload length) followed by the payload. Frames may be split across reads, so bytes are buffered until a
    frame is complete. With a TTY the stream is raw and all of it is stdout; ``tty=None`` detects that from the
    first bytes.
    """

    HEADER_SIZE = 8

    def __init__(self, tty: bool | None = None, limit: int = DEFAULT_OUTPUT_LIMIT):
        self.tty = tty
        self.limit = limit
        self._pending = b""
        self._out: dict[int, bytearray] = {STREAM_STDOUT: bytearray(), STREAM_STDERR: bytearray()}
        self.truncated = False

    def _keep(self, stream: int, payload: bytes) -> None:
        buf = self._out[STREAM_STDERR if stream == STREAM_STDERR else STREAM_STDOUT]
        room = self.limit - len(buf)
        if len(payload) > room:
            self.truncated = True
            payload = payload[: max(room, 0)]
        buf.extend(payload)

    @classmethod
    def _looks_like_header(cls, data: bytes) -> bool:
        return (
            len(data) >= 4 and data[0] in (STREAM_STDIN, STREAM_STDOUT, STREAM_STDERR) and data[1:4] == b"\x00\x00\x00"
        )

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self.tty is None:
            probe = self._pending + data
            if len(probe) < 4:
                self._pending = probe
                return
            self.tty = not self._looks_like_header(probe)
            self._pending = b""
            data = probe
        if self.tty:
            self._keep(STREAM_STDOUT, data)
            return
        buf = self._pending + data
        offset = 0
        while len(buf) - offset >= self.HEADER_SIZE:
            stream = buf[offset]
            size = int.from_bytes(buf[offset + 4 : offset + 8], "big")
            end = offset + self.HEADER_SIZE + size
            if end > len(buf):
                break
            self._keep(stream, buf[offset + self.HEADER_SIZE : end])
            offset = end
        self._pending = buf[offset:]

    def close(self) -> None:
        """Account for bytes left over: a truncated frame (or a short raw stream) still counts as output."""
        if self._pending:
            rest = self._pending
            self._pending = b""
            if self.tty is None or self.tty:
                self._keep(STREAM_STDOUT, rest)
            elif len(rest) > self.HEADER_SIZE:
                self._keep(rest[0], rest[self.HEADER_SIZE :])

    @property
    def stdout(self) -> bytes:
        return bytes(self._out[STREAM_STDOUT])

    @property
    def stderr(self) -> bytes:
        return bytes(self._out[STREAM_STDERR])


def demux_stream(data: bytes, tty: bool | None = None) -> tuple[bytes, bytes]:
    """Demultiplex a complete stream; returns (stdout, stderr)."""
    demuxer = StreamDemuxer(tty=tty, limit=max(len(data), 1))
    demuxer.feed(data)
    demuxer.close()
    return demuxer.stdout, demuxer.stderr


@dataclass
class ExecResult:
    """Outcome of one command run with exec in a container."""

    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    truncated: bool = False
    duration_s: float = 0.0
    exec_id: str = ""

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")


@dataclass
class _Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> t.Any:
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))


class DockerClient:
    """Thread-safe enough for concurrent probes: every request opens its own connection."""

    def __init__(self, docker_host: str = DEFAULT_DOCKER_HOST, timeout: float = 30.0, api_version: str | None = None):
        self.docker_host = docker_host
        self.timeout = timeout
        self._api_version = api_version
        parts = urlsplit(docker_host)
        if parts.scheme == "unix":
            # unix:///var/run/docker.sock -> path /var/run/docker.sock (netloc is empty)
            self.socket_path: str | None = (parts.netloc + parts.path) or "/var/run/docker.sock"
            self._tcp: tuple[str, int] | None = None
        elif parts.scheme in ("tcp", "http"):
            if not parts.hostname:
                raise DockerConnectionError("docker_host %r has no host name" % docker_host)
            self.socket_path = None
            self._tcp = (parts.hostname, parts.port or 2375)
        else:
            raise DockerConnectionError(
                "docker_host %r is not supported: use unix:///path/to/docker.sock (or tcp://host:port without TLS)"
                % docker_host
            )

    # -- transport -----------------------------------------------------------------------------------

    def _where(self) -> str:
        return self.socket_path if self.socket_path else "%s:%s" % self._tcp  # type: ignore[str-format]

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.socket_path:
            return UnixHTTPConnection(self.socket_path, timeout=timeout)
        host, port = self._tcp  # type: ignore[misc]
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def _explain_connect_error(self, exc: OSError) -> DockerConnectionError:
        where = self._where()
        if isinstance(exc, FileNotFoundError):
            return DockerConnectionError(
                "Docker socket %s does not exist: is the Docker Engine installed and running on this host "
                "(systemctl status docker)? Set docker_host if it listens elsewhere." % where
            )
        if isinstance(exc, PermissionError):
            return DockerConnectionError(
                "permission denied on Docker socket %s: run the task as root (become: true) or as a member of "
                "the 'docker' group." % where
            )
        if isinstance(exc, ConnectionRefusedError):
            return DockerConnectionError(
                "Docker Engine refused the connection on %s: dockerd is not running (systemctl start docker)." % where
            )
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return DockerTimeout("Docker Engine on %s did not answer in time (%s)." % (where, exc))
        return DockerConnectionError("cannot talk to Docker Engine on %s: %s" % (where, exc))

    def _path(self, path: str, versioned: bool) -> str:
        if not versioned:
            return path
        return "/v%s%s" % (self.api_version, path)

    def _open(
        self,
        method: str,
        path: str,
        query: dict[str, t.Any] | None,
        body: t.Any,
        timeout: float | None,
        versioned: bool,
        data: bytes | t.Iterable[bytes] | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
        full_path = self._path(path, versioned)
        if query:
            full_path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        payload: bytes | t.Iterable[bytes] | None = data
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        headers.update(extra_headers or {})
        conn = self._connection(self.timeout if timeout is None else timeout)
        try:
            conn.request(method, full_path, body=payload, headers=headers)
            resp = conn.getresponse()
        except OSError as exc:
            conn.close()
            raise self._explain_connect_error(exc) from exc
        except http.client.HTTPException as exc:
            conn.close()
            raise DockerConnectionError("bad answer from Docker Engine on %s: %r" % (self._where(), exc)) from exc
        except BaseException:  # for example the caller's chunk iterator failing mid-body
            conn.close()
            raise
        return conn, resp, full_path

    def _raise_for_status(self, method: str, path: str, status: int, body: bytes) -> None:
        if status < 400:
            return
        message = body.decode("utf-8", errors="replace").strip()
        try:
            message = json.loads(message).get("message", message)
        except (ValueError, AttributeError):
            pass
        cls = {404: DockerNotFound, 409: DockerConflict}.get(status, DockerAPIError)
        raise cls(status, "Docker API %s %s: HTTP %s: %s" % (method, path, status, message), method, path, message)

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, t.Any] | None = None,
        body: t.Any = None,
        timeout: float | None = None,
        versioned: bool = True,
    ) -> _Response:
        """One request, whole body read; raises DockerAPIError for HTTP >= 400."""
        conn, resp, full_path = self._open(method, path, query, body, timeout, versioned)
        try:
            data = resp.read()
        except OSError as exc:
            raise self._explain_connect_error(exc) from exc
        except http.client.HTTPException as exc:
            raise DockerConnectionError("bad answer from Docker Engine on %s: %r" % (self._where(), exc)) from exc
        finally:
            conn.close()
        self._raise_for_status(method, full_path, resp.status, data)
        return _Response(resp.status, resp.reason, {k.lower(): v for k, v in resp.getheaders()}, data)

    def request_json(
        self,
        method: str,
        path: str,
        query: dict[str, t.Any] | None = None,
        body: t.Any = None,
        timeout: float | None = None,
    ) -> t.Any:
        return self.request(method, path, query=query, body=body, timeout=timeout).json()

    def _stream(
        self,
        method: str,
        path: str,
        query: dict[str, t.Any] | None,
        body: t.Any,
        timeout: float,
        demuxer: StreamDemuxer,
    ) -> None:
        """Feed a streamed (possibly chunked, possibly multiplexed) answer into demuxer within timeout s total."""
        deadline = time.monotonic() + timeout
        conn, resp, full_path = self._open(method, path, query, body, timeout, True)
        try:
            if resp.status >= 400:
                self._raise_for_status(method, full_path, resp.status, resp.read())
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DockerTimeout("no end of output from %s %s within %.3g s" % (method, path, timeout))
                if conn.sock is not None:
                    conn.sock.settimeout(remaining)
                chunk = resp.read1(65536)
                if not chunk:
                    break
                demuxer.feed(chunk)
        except TimeoutError as exc:
            raise DockerTimeout("no end of output from %s %s within %.3g s" % (method, path, timeout)) from exc
        except OSError as exc:
            raise self._explain_connect_error(exc) from exc
        except http.client.HTTPException as exc:
            raise DockerConnectionError("bad answer from Docker Engine on %s: %r" % (self._where(), exc)) from exc
        finally:
            conn.close()
        demuxer.close()

    @contextlib.contextmanager
    def open_stream(
        self,
        method: str,
        path: str,
        query: dict[str, t.Any] | None = None,
        data: bytes | t.Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> t.Iterator[http.client.HTTPResponse]:
        """A request whose body (bytes or chunks, with a Content-Length header) and answer are streamed by the
        caller; HTTP >= 400 raises DockerAPIError before the block runs. The connection closes after it."""
        conn, resp, full_path = self._open(method, path, query, None, timeout, True, data, headers)
        try:
            if resp.status >= 400:
                self._raise_for_status(method, full_path, resp.status, resp.read(4096))
            yield resp
        finally:
            conn.close()

    def hijack(self, path: str, body: t.Any, timeout: float | None = None) -> tuple[socket.socket, bytes]:
        """POST path with an ``Upgrade: tcp`` request and hand over the raw socket (exec with stdin).

        Returns the connected socket and the bytes read past the answer's header; the caller closes the socket.
        """
        sock = self._raw_socket(self.timeout if timeout is None else timeout)
        payload = json.dumps(body).encode("utf-8")
        head = (
            "POST %s HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nConnection: Upgrade\r\n"
            "Upgrade: tcp\r\nContent-Length: %d\r\n\r\n" % (self._path(path, True), len(payload))
        )
        try:
            sock.sendall(head.encode("ascii") + payload)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    raise DockerConnectionError("Docker Engine closed the connection before answering POST %s" % path)
                buf += chunk
            header, leftover = buf.split(b"\r\n\r\n", 1)
            status = int(header.split(b" ", 2)[1])
            if status not in (101, 200):
                self._raise_for_status("POST", path, status, leftover[:500])
        except OSError as exc:
            sock.close()
            raise self._explain_connect_error(exc) from exc
        except BaseException:
            sock.close()
            raise
        return sock, leftover

    def _raw_socket(self, timeout: float) -> socket.socket:
        try:
            if self.socket_path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(timeout)
                    sock.connect(self.socket_path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._tcp, timeout=timeout)  # type: ignore[arg-type]
        except OSError as exc:
            raise self._explain_connect_error(exc) from exc
        sock.settimeout(timeout)
        return sock

    # -- engine --------------------------------------------------------------------------------------

    @property
    def api_version(self) -> str:
        """Negotiated once per client: the engine's version, capped at the newest this client knows."""
        if self._api_version is None:
            try:
                server = self.version().get("ApiVersion") or DEFAULT_API_VERSION
            except DockerAPIError:
                server = DEFAULT_API_VERSION
            self._api_version = negotiate_api_version(server)
        return self._api_version

    def negotiate(self) -> str:
        """Settle the API version now (it is otherwise settled by the first request)."""
        return self.api_version

    def version(self) -> dict[str, t.Any]:
        return self.request("GET", "/version", versioned=False).json() or {}

    def ping(self) -> bool:
        return self.request("GET", "/_ping", versioned=False).body.strip() == b"OK"

    # -- containers ----------------------------------------------------------------------------------

    def inspect_container(self, container: str, timeout: float | None = None) -> dict[str, t.Any]:
        """GET /containers/{id}/json; raises DockerNotFound when there is no such container."""
        return self.request_json("GET", "/containers/%s/json" % quote(container, safe=""), timeout=timeout)

    def list_containers(
        self,
        labels: dict[str, str | None] | list[str] | None = None,
        all: bool = False,  # pylint: disable=redefined-builtin
        filters: dict[str, list[str]] | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, t.Any]]:
        """Containers matching every label filter: {"com.docker.compose.project": "demo", "x": None}."""
        merged: dict[str, list[str]] = {k: list(v) for k, v in (filters or {}).items()}
        if labels:
            items = labels.items() if isinstance(labels, dict) else ((label, None) for label in labels)
            merged.setdefault("label", []).extend(k if v is None else "%s=%s" % (k, v) for k, v in items)
        query: dict[str, t.Any] = {"all": "1" if all else "0"}
        if merged:
            query["filters"] = json.dumps(merged)
        return self.request_json("GET", "/containers/json", query=query, timeout=timeout) or []

    def container_logs(
        self,
        container: str,
        tail: int | str = 50,
        timestamps: bool = False,
        tty: bool | None = None,
        timeout: float | None = None,
    ) -> tuple[str, str]:
        """The last `tail` lines of a container's stdout and stderr (not followed)."""
        demuxer = StreamDemuxer(tty=tty)
        query = {"stdout": "1", "stderr": "1", "tail": str(tail), "timestamps": "1" if timestamps else "0"}
        self._stream(
            "GET",
            "/containers/%s/logs" % quote(container, safe=""),
            query,
            None,
            self.timeout if timeout is None else timeout,
            demuxer,
        )
        return demuxer.stdout.decode("utf-8", errors="replace"), demuxer.stderr.decode("utf-8", errors="replace")

    def stop_container(self, container: str, grace_s: int | None = None, timeout: float | None = None) -> None:
        """Stop with a grace period (SIGTERM, then SIGKILL after grace_s); a stopped container is fine."""
        # The request itself lasts as long as the grace period.
        wait = (timeout if timeout is not None else self.timeout) + (grace_s or 10)
        query = {"t": grace_s} if grace_s is not None else None
        self.request("POST", "/containers/%s/stop" % quote(container, safe=""), query=query, timeout=wait)

    def remove_container(
        self, container: str, force: bool = False, volumes: bool = False, timeout: float | None = None
    ) -> None:
        query = {"force": "1" if force else "0", "v": "1" if volumes else "0"}
        self.request("DELETE", "/containers/%s" % quote(container, safe=""), query=query, timeout=timeout)

    def create_container(self, body: dict[str, t.Any], name: str | None = None, timeout: float | None = None) -> str:
        """POST /containers/create; returns the new container's id."""
        query = {"name": name} if name else None
        return self.request_json("POST", "/containers/create", query=query, body=body, timeout=timeout)["Id"]

    def start_container(self, container: str, timeout: float | None = None) -> None:
        """Start a container; one that already runs is fine (HTTP 304)."""
        self.request("POST", "/containers/%s/start" % quote(container, safe=""), timeout=timeout)

    def wait_container(self, container: str, timeout: float | None = None) -> int:
        """Wait for a container to stop; returns its exit code."""
        status = self.request_json("POST", "/containers/%s/wait" % quote(container, safe=""), timeout=timeout)
        return int((status or {}).get("StatusCode", -1))

    # -- images and volumes --------------------------------------------------------------------------

    def inspect_image(self, image: str, timeout: float | None = None) -> dict[str, t.Any]:
        """GET /images/{name or id}/json; raises DockerNotFound when the engine does not have it."""
        return self.request_json("GET", "/images/%s/json" % quote(image, safe=""), timeout=timeout)

    def inspect_distribution(self, image: str, timeout: float | None = None) -> dict[str, t.Any]:
        """GET /distribution/{name}/json: what the registry has for a reference, without pulling."""
        return self.request_json("GET", "/distribution/%s/json" % quote(image, safe=""), timeout=timeout) or {}

    def pull_image(self, repository: str, tag: str | None = None, timeout: float | None = 600.0) -> None:
        """POST /images/create and read its progress stream; raises DockerAPIError with the registry's words."""
        query = {"fromImage": repository, "tag": tag} if tag else {"fromImage": repository}
        body = self.request("POST", "/images/create", query=query, timeout=timeout).body
        ref = "%s:%s" % (repository, tag) if tag else repository
        for line in body.decode("utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("error"):
                raise DockerAPIError(
                    500, "cannot pull %s: %s" % (ref, event["error"]), "POST", "/images/create", str(event["error"])
                )

    def inspect_volume(self, volume: str, timeout: float | None = None) -> dict[str, t.Any]:
        """GET /volumes/{name}; raises DockerNotFound when there is no such volume."""
        return self.request_json("GET", "/volumes/%s" % quote(volume, safe=""), timeout=timeout)

    # -- exec ----------------------------------------------------------------------------------------

    def exec_create(
        self,
        container: str,
        command: list[str],
        env: dict[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        stdin: bool = False,
    ) -> str:
        """Create an exec instance (no TTY, stdout and stderr attached, stdin when asked); returns its id."""
        if not command or not all(isinstance(arg, str) for arg in command):
            raise ValueError("command must be a non-empty list of strings (argv), got %r" % (command,))
        body: dict[str, t.Any] = {
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "Cmd": list(command),
        }
        if env:
            body["Env"] = ["%s=%s" % (k, v) for k, v in env.items()]
        if user:
            body["User"] = user
        if workdir:
            body["WorkingDir"] = workdir
        data = self.request_json("POST", "/containers/%s/exec" % quote(container, safe=""), body=body, timeout=timeout)
        return data["Id"]

    def exec_start(
        self, exec_id: str, timeout: float | None = None, limit: int = DEFAULT_OUTPUT_LIMIT
    ) -> tuple[bytes, bytes, bool]:
        """Run the exec instance and collect its output; returns (stdout, stderr, truncated)."""
        demuxer = StreamDemuxer(tty=False, limit=limit)
        self._stream(
            "POST",
            "/exec/%s/start" % quote(exec_id, safe=""),
            None,
            {"Detach": False, "Tty": False},
            self.timeout if timeout is None else timeout,
            demuxer,
        )
        return demuxer.stdout, demuxer.stderr, demuxer.truncated

    def exec_inspect(self, exec_id: str, timeout: float | None = None) -> dict[str, t.Any]:
        return self.request_json("GET", "/exec/%s/json" % quote(exec_id, safe=""), timeout=timeout)

    def exec_run(
        self,
        container: str,
        command: list[str],
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> ExecResult:
        """Create, start and inspect an exec instance: `docker exec` without the CLI.

        On timeout DockerTimeout is raised; the engine cannot kill an exec instance, so the command may still
        be running inside the container.
        """
        total = self.timeout if timeout is None else timeout
        started = time.monotonic()
        exec_id = self.exec_create(container, command, env=env, user=user, workdir=workdir, timeout=total)
        remaining = max(total - (time.monotonic() - started), 0.001)
        try:
            stdout, stderr, truncated = self.exec_start(exec_id, timeout=remaining, limit=limit)
        except DockerTimeout as exc:
            raise DockerTimeout(
                "%s in container %s did not finish within %g s (the engine cannot stop an exec: it may still run)"
                % (command, container, total)
            ) from exc
        # The stream can end a moment before the engine records the exit code.
        info = self.exec_inspect(exec_id, timeout=total)
        settle_deadline = time.monotonic() + 2.0
        while info.get("Running") and time.monotonic() < settle_deadline:
            time.sleep(0.02)
            info = self.exec_inspect(exec_id, timeout=total)
        return ExecResult(
            exit_code=info.get("ExitCode"),
            stdout=stdout,
            stderr=stderr,
            truncated=truncated,
            duration_s=time.monotonic() - started,
            exec_id=exec_id,
        )
