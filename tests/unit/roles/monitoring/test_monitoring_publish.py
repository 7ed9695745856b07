# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The monitoring UIs published through Nginx (issue 20, items 2 and 6): the site the role renders, under the
nginx role's own nginx.conf, served by a real Nginx in front of a stand-in for Prometheus and Alertmanager that
records what reaches it. Whoever logs in cannot reach the admin API or the lifecycle endpoints, however the path is
spelled; the servers listen on the configured address only; gixy-ng and `nginx -t` accept the plain and the TLS
variants; the preflight refuses an address beyond loopback without TLS, naming the variable, and changes nothing."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import base64
import http.client
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from ansible_collections.opsbook.stack.tests.unit.http_fixtures import QuietHandler, free_ports, make_tls_files
from ansible_collections.opsbook.stack.tests.unit.roles.monitoring.conftest import preflight as role_preflight
from ansible_collections.opsbook.stack.tests.unit.roles.monitoring.conftest import render
from ansible_collections.opsbook.stack.tests.unit.roles.nginx.test_nginx_routing import render_tree

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
GIXY = Path(sys.executable).with_name("gixy")
USER, PASSWORD = "oncall", "a-long-test-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()}
ADMIN_PATHS = [
    ("POST", "/-/quit"),
    ("PUT", "/-/quit"),
    ("POST", "/-/reload"),
    ("POST", "/api/v1/admin/tsdb/snapshot"),
    ("POST", "/api/v1/admin/tsdb/delete_series?match[]=up"),
    ("POST", "/api/v1/%61dmin/tsdb/snapshot"),  # percent-encoded
    ("POST", "//api/v1/admin/tsdb/snapshot"),  # doubled slash
    ("POST", "/api/v1/./admin/tsdb/clean_tombstones"),  # dot segment
    ("POST", "/-/%71uit"),
]

needs_nginx = pytest.mark.skipif(
    not (os.path.exists(NGINX) and os.path.exists("/etc/nginx/mime.types") and os.geteuid() == 0),
    reason="needs root and nginx (apt-get install nginx-light)",
)


class Recorder(QuietHandler):
    """Prometheus or Alertmanager as far as Nginx can tell: 200 for everything, and a list of what arrived."""

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path))  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._send(200, b"upstream\n")

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def site_variables(conf: Path, ports: list[int], upstream_port: int, **overrides) -> dict:
    return {
        "monitoring_nginx_ports": {"prometheus": ports[0], "alertmanager": ports[1], "grafana": ports[2]},
        "monitoring_prometheus_port": upstream_port,
        "monitoring_alertmanager_port": upstream_port,
        "monitoring_grafana_port": upstream_port,
        "monitoring_grafana_enabled": True,
        "__monitoring_nginx_htpasswd": str(conf / "monitoring.htpasswd"),
        **overrides,
    }


def tree_ports() -> tuple[list[int], list[int]]:
    """Six distinct free ports from one call: three for the monitoring site, three for the nginx role's own site,
    stub_status and gate. Separate calls may hand out the same port twice, and two servers on one socket are a
    different config (gixy's default_server_flag, nginx's "no ssl_certificate" for the role's site). No port
    with "443" in its digits: gixy-ng's hsts_header check takes any listen argument containing "443" for HTTPS
    (gixy/plugins/hsts_header.py), so 127.0.0.1:44312 made the plain site fail once in about 25 runs."""
    ports = [port for port in free_ports(12) if "443" not in str(port)][:6]
    assert len(ports) == 6, ports
    return ports[:3], ports[3:]


def write_tree(conf: Path, site: dict, role_ports: list[int]) -> Path:
    """The nginx role's tree (its own site on role_ports) plus the monitoring site in conf.d; returns nginx.conf."""
    http_port, stub_port, gate_port = role_ports
    render_tree(
        conf,
        {
            "nginx_user": "root",
            "nginx_compose_project": "demo",
            "nginx_upstreams": [{"service": "backend", "port": 8000}],
            "nginx_pid_file": str(conf / "nginx.pid"),
            "nginx_error_log": str(conf / "error.log"),
            "nginx_access_log": str(conf / "access.log"),
            "nginx_http_port": http_port,
            "nginx_listen_ipv6": False,
            "nginx_stub_status_listen": "127.0.0.1:%d" % stub_port,
        },
        gate_port,
    )
    (conf / "conf.d" / "opsbook-monitoring.conf").write_text(render("nginx-monitoring.conf.j2", site))
    line = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=PASSWORD, capture_output=True, text=True, check=True
    ).stdout.strip()
    Path(site["__monitoring_nginx_htpasswd"]).write_text("%s:%s\n" % (USER, line))
    return conf / "nginx.conf"


class Published:
    """Nginx with the monitoring site, in front of a Recorder."""

    def __init__(self, tmp: Path, **overrides):
        self.conf = tmp / "conf"
        self.upstream = ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), Recorder)
        self.upstream.daemon_threads = True
        self.upstream.seen = []  # type: ignore[attr-defined]
        threading.Thread(target=self.upstream.serve_forever, daemon=True).start()
        self.ports, role_ports = tree_ports()
        self.site = site_variables(self.conf, self.ports, self.upstream.server_address[1], **overrides)
        nginx_conf = write_tree(self.conf, self.site, role_ports)
        test = subprocess.run([NGINX, "-t", "-c", str(nginx_conf)], capture_output=True, text=True, check=False)
        assert test.returncode == 0, test.stderr
        self.nginx = subprocess.Popen([NGINX, "-c", str(nginx_conf), "-g", "daemon off;"])
        deadline = time.monotonic() + 10
        address = self.site.get("monitoring_nginx_listen_address", "127.0.0.1")
        while self.request("GET", "/-/ready", self.ports[0], host=address)[0] is None:  # any answer: HTTP or TLS
            assert time.monotonic() < deadline, (self.conf / "error.log").read_text()
            time.sleep(0.1)
        self.upstream.seen.clear()  # type: ignore[attr-defined]

    def request(self, method: str, path: str, port: int, auth: bool = True, host: str = "127.0.0.1") -> tuple:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request(method, path, body=b"" if method != "GET" else None, headers=AUTH if auth else {})
            answer = conn.getresponse()
            return answer.status, answer.read()
        except OSError as exc:
            return None, str(exc)
        finally:
            conn.close()

    @property
    def seen(self) -> list:
        return self.upstream.seen  # type: ignore[attr-defined]

    def close(self) -> None:
        self.nginx.terminate()
        self.nginx.wait(10)
        self.upstream.shutdown()
        self.upstream.server_close()


@pytest.fixture
def published(tmp_path):
    running = Published(tmp_path)
    try:
        yield running
    finally:
        running.close()


@needs_nginx
def test_no_login_reaches_the_admin_api_or_the_lifecycle_endpoints(published):
    prometheus, alertmanager, grafana = published.ports
    for method, path in ADMIN_PATHS:
        for port in (prometheus, alertmanager):
            if "/api/" in path and port == alertmanager:
                continue  # Prometheus's admin API; Alertmanager's API is its UI's
            status, _body = published.request(method, path, port)
            assert status == 403, (method, path, port, status)
    assert published.seen == [], "a request for an admin or lifecycle path reached the upstream"
    # Everything else goes through, with a login only.
    assert published.request("GET", "/api/v1/query?query=up", prometheus)[0] == 200
    assert published.request("POST", "/api/v2/silences", alertmanager)[0] == 200
    assert published.request("GET", "/api/health", grafana)[0] == 200
    assert published.request("GET", "/api/v1/query?query=up", prometheus, auth=False)[0] == 401
    # Refused before the login is asked for (a return runs before auth_basic): nothing to learn by guessing.
    assert published.request("POST", "/-/quit", prometheus, auth=False)[0] == 403
    assert [path for _method, path in published.seen] == ["/api/v1/query?query=up", "/api/v2/silences", "/api/health"]


@needs_nginx
def test_the_servers_listen_on_loopback_only_by_default(published):
    # 127.0.0.2 is this machine too; a server bound to every address would answer there.
    for port in published.ports:
        assert published.request("GET", "/", port)[0] == 200
        status, error = published.request("GET", "/", port, host="127.0.0.2")
        assert status is None and "refused" in error.lower(), (port, status, error)


@needs_nginx
def test_tls_on_another_address_serves_https_and_no_plain_http(tmp_path):
    tls = make_tls_files(tmp_path)
    running = Published(
        tmp_path,
        monitoring_nginx_listen_address="127.0.0.2",
        monitoring_nginx_tls_certificate=str(tls.server_cert),
        monitoring_nginx_tls_certificate_key=str(tls.server_key),
    )
    try:
        port = running.ports[0]
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.2", port, timeout=5, context=context)
        conn.request("POST", "/-/quit", body=b"", headers=AUTH)
        assert conn.getresponse().status == 403
        conn.close()
        status, body = running.request("GET", "/", port, host="127.0.0.2")
        assert status == 400 and b"plain HTTP request was sent to HTTPS port" in body, (status, body)
    finally:
        running.close()


@needs_nginx
@pytest.mark.parametrize("variant", ["loopback", "tls"])
def test_gixy_and_nginx_t_accept_the_site(tmp_path, variant):
    assert GIXY.exists(), "gixy-ng is not installed in %s (./dev venv installs requirements-dev.txt)" % GIXY.parent
    conf = tmp_path / "conf"
    overrides = {}
    if variant == "tls":
        tls = make_tls_files(tmp_path)
        overrides = {
            "monitoring_nginx_listen_address": "0.0.0.0",
            "monitoring_nginx_tls_certificate": str(tls.server_cert),
            "monitoring_nginx_tls_certificate_key": str(tls.server_key),
        }
    site_ports, role_ports = tree_ports()
    nginx_conf = write_tree(conf, site_variables(conf, site_ports, 9090, **overrides), role_ports)
    done = subprocess.run([str(GIXY), str(nginx_conf)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "No issues found." in done.stdout, done.stdout + done.stderr
    done = subprocess.run([NGINX, "-t", "-c", str(nginx_conf)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def preflight(tmp_path: Path, **given) -> subprocess.CompletedProcess:
    """The role's preflight with the UIs published (their users set) and `given` on top."""
    return role_preflight(
        tmp_path, {"monitoring_nginx_publish": True, "monitoring_nginx_users": {USER: PASSWORD}, **given}
    )


@pytest.mark.parametrize(
    "given",
    [
        {"monitoring_nginx_listen_address": "0.0.0.0"},
        {"monitoring_nginx_listen_address": "192.0.2.10", "monitoring_nginx_tls_certificate": "/etc/ssl/m.pem"},
        {"monitoring_nginx_listen_address": "::"},
        {"monitoring_nginx_listen_address": "127.0.0.1; return 200"},
        {"monitoring_nginx_listen_address": "example.com"},
        {
            "monitoring_nginx_listen_address": "0.0.0.0",
            "monitoring_nginx_tls_certificate": "/etc/ssl/m.pem; ssl_verify_client off",
            "monitoring_nginx_tls_certificate_key": "/etc/ssl/m.key",
        },
    ],
    ids=["any-plain", "cert-without-key", "ipv6-any-plain", "injection", "a-name", "cert-injection"],
)
def test_the_preflight_refuses_beyond_loopback_without_tls_naming_the_variable(tmp_path, given):
    done = preflight(tmp_path, **given)
    assert done.returncode != 0, done.stdout
    assert "monitoring_nginx_listen_address" in done.stdout and "Nothing was changed" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"monitoring_nginx_listen_address": "::1"},
        {
            "monitoring_nginx_listen_address": "0.0.0.0",
            "monitoring_nginx_tls_certificate": "/etc/ssl/monitoring.pem",
            "monitoring_nginx_tls_certificate_key": "/etc/ssl/private/monitoring.key",
        },
    ],
    ids=["default", "ipv6-loopback", "any-with-tls"],
)
def test_the_preflight_accepts_loopback_or_tls(tmp_path, given):
    done = preflight(tmp_path, **given)
    assert done.returncode == 0, done.stdout + done.stderr
