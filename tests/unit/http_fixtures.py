# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""HTTPS servers on 127.0.0.1 with certificates made by openssl for the session, for the HTTP client options.

Import the fixtures into a test module:
    from ansible_collections.opsbook.stack.tests.unit.http_fixtures import tls, tls_server, mtls_server  # noqa: F401

`tls` is the PEM material (a CA, a server certificate for 127.0.0.1 and localhost, a client certificate).
`tls_server` answers over TLS; `mtls_server` also wants a client certificate signed by the CA. Both speak a
little of the Prometheus API, behind basic authentication when the test sets `server.credentials`:

    /api/v1/query   {"status": "success", ...} scalar 42; 401 with a Basic challenge without valid credentials
    /ok             200 {"status": "ok"}
    /redirect       302 to /ok
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import base64
import json
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

USER, PASSWORD = "ops", "s3cret pass"
SCALAR_ANSWER = {"status": "success", "data": {"resultType": "scalar", "result": [0, "42"]}}


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """count distinct TCP ports free on host: every socket stays bound until all are chosen (one at a time, the
    kernel may hand out the same port twice: nginx and dnsmasq of one test were once given the same one)."""
    sockets = [socket.socket() for _unused in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One free TCP port on host (free_ports when a test needs several at once)."""
    return free_ports(1, host)[0]


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_tls_files(directory: Path) -> TlsFiles:
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=opsbook test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    issued = {}
    for name, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        key, csr, cert, ext = (directory / ("%s.%s" % (name, suffix)) for suffix in ("key", "csr", "pem", "ext"))
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n%s\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" % extensions
        )
        _openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=opsbook test %s" % name)
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext),
        )  # fmt: skip
        issued[name] = (cert, key)
    return TlsFiles(ca, issued["server"][0], issued["server"][1], issued["client"][0], issued["client"][1])


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no access log on pytest's output, and one way to send a whole answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _Handler(QuietHandler):
    def _authorized(self) -> bool:
        credentials = self.server.credentials  # type: ignore[attr-defined]
        if credentials is None:
            return True
        expected = "Basic " + base64.b64encode(("%s:%s" % credentials).encode()).decode()
        return self.headers.get("Authorization") == expected

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.server.seen.append(dict(self.headers))  # type: ignore[attr-defined]
        if path == "/api/v1/query":
            if not self._authorized():
                self._send(401, b"unauthorized\n", {"WWW-Authenticate": 'Basic realm="prometheus"'})
            else:
                self._send(200, json.dumps(SCALAR_ANSWER).encode(), {"Content-Type": "application/json"})
        elif path == "/ok":
            self._send(200, json.dumps({"status": "ok"}).encode())
        elif path == "/redirect":
            self._send(302, b"", {"Location": "/ok"})
        else:
            self._send(404, b"no such route\n")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        pass  # failed handshakes are what some tests want


class TlsServer:
    def __init__(self, files: TlsFiles, client_certs: bool) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(files.server_cert), str(files.server_key))
        if client_certs:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(files.ca))
        self.httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.httpd.credentials = None  # type: ignore[attr-defined]
        self.httpd.seen = []  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.files = files
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return "https://127.0.0.1:%d" % self.port

    def url(self, path: str) -> str:
        return self.base + path

    def require(self, credentials: tuple[str, str] | None) -> None:
        self.httpd.credentials = credentials  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(tls):
    server = TlsServer(tls, client_certs=False)
    yield server
    server.close()


@pytest.fixture
def mtls_server(tls):
    server = TlsServer(tls, client_certs=True)
    yield server
    server.close()


__all__ = ["PASSWORD", "USER", "TlsFiles", "TlsServer", "make_tls_files", "mtls_server", "tls", "tls_server"]
