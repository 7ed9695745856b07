# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The nginx role's rendered configuration judged by tools nobody here wrote: gixy-ng finds no issue in any variant
(plain HTTP; TLS; TLS with WebSocket, SSE and static routes), and the real `nginx -t` accepts each one. The role's
input check refuses a cipher string that would break out of its directive, naming the variable."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.opsbook.stack.tests.unit.local_play import run_plays
from ansible_collections.opsbook.stack.tests.unit.roles.nginx.test_nginx_routing import render_tree, role_variables

ROLE = Path(__file__).resolve().parents[4] / "roles" / "nginx"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
GIXY = Path(sys.executable).with_name("gixy")

TLS = {"nginx_tls_enabled": True}
ROUTES = {
    "nginx_upstreams": [{"service": "backend", "port": 8000}, {"service": "frontend", "port": 8080}],
    "nginx_routes": [
        {"path": "/ws/", "upstream": "backend", "websocket": True},
        {"path": "/api/", "upstream": "backend"},
        {"path": "/", "upstream": "frontend"},
    ],
    "nginx_streaming_upstream": "backend",
}
# astron-agent's layout (inventories/astron-agent): two services stream, so the streams are routes with
# streaming true and no nginx_streaming_upstream; the rate limit on, so a streaming route carries exactly one.
PLATFORM_ROUTES = {
    "nginx_upstreams": [
        {"service": "console-hub", "port": 8080},
        {"service": "core-workflow", "port": 7880},
        {"service": "console-frontend", "port": 80},
    ],
    "nginx_routes": [
        {"path": "/workflow/v1/chat/completions", "upstream": "core-workflow", "streaming": True},
        {"path": "/console-api/chat-message/", "upstream": "console-hub", "streaming": True},
        {"path": "/console-api/", "upstream": "console-hub"},
        {"path": "/", "upstream": "console-frontend"},
    ],
    "nginx_streaming_upstream": "",
    "nginx_static_upstream": "console-frontend",
    "nginx_limit_req_enabled": True,
}
VARIANTS = {
    "plain": {"nginx_upstreams": [{"service": "backend", "port": 8000}]},
    "tls": {**TLS, "nginx_upstreams": [{"service": "backend", "port": 8000}]},
    "tls-routes": {**TLS, **ROUTES},
    "platform-routes": PLATFORM_ROUTES,
}


def write_tree(conf: Path, overrides: dict) -> Path:
    """The role's files rendered into conf (with a self-signed certificate for TLS); returns nginx.conf."""
    if overrides.get("nginx_tls_enabled"):
        (conf / "tls").mkdir(parents=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-keyout", str(conf / "tls" / "site.key"), "-out", str(conf / "tls" / "site.crt")],
            capture_output=True, check=True,
        )  # fmt: skip
        overrides = {
            **overrides,
            "nginx_tls_certificate": str(conf / "tls" / "site.crt"),
            "nginx_tls_certificate_key": str(conf / "tls" / "site.key"),
        }
    render_tree(
        conf,
        {
            "nginx_compose_project": "demo",
            "nginx_pid_file": str(conf / "nginx.pid"),
            "nginx_error_log": str(conf / "error.log"),
            "nginx_access_log": str(conf / "access.log"),
            **overrides,
        },
        18081,
    )
    return conf / "nginx.conf"


@pytest.fixture(params=sorted(VARIANTS))
def rendered(request, tmp_path) -> Path:
    if not os.path.exists("/etc/nginx/mime.types"):
        pytest.skip("needs nginx installed (apt-get install nginx) for mime.types and nginx -t")
    return write_tree(tmp_path / request.param, VARIANTS[request.param])


def test_gixy_finds_no_issue(rendered):
    # gixy-ng is pinned in requirements-dev.txt: missing, it is a broken venv, not a reason to skip.
    assert GIXY.exists(), "gixy-ng is not installed in %s (./dev venv installs requirements-dev.txt)" % GIXY.parent
    done = subprocess.run([str(GIXY), str(rendered)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "No issues found." in done.stdout, done.stdout + done.stderr


def test_nginx_t_accepts_it(rendered):
    if os.geteuid() != 0 or not os.path.exists(NGINX):
        pytest.skip("nginx -t needs root and nginx")
    done = subprocess.run([NGINX, "-t", "-c", str(rendered)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def preflight(tmp_path: Path, ciphers: list, **overrides) -> subprocess.CompletedProcess:
    play = {
        "gather_facts": True,
        "gather_subset": ["!all", "min"],
        "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
        "tasks": [{"ansible.builtin.import_tasks": str(ROLE / "tasks" / "preflight.yml")}],
    }
    given = {
        "nginx_tls_enabled": True,
        "nginx_tls_certificate": "/etc/ssl/site.crt",
        "nginx_tls_certificate_key": "/etc/ssl/site.key",
        "nginx_tls_ciphers": ciphers,
        "nginx_compose_project": "demo",
        "nginx_upstreams": [{"service": "backend", "port": 8000}],
        **overrides,
    }
    return run_plays(tmp_path, [play], given)


@pytest.mark.parametrize(
    "ciphers",
    [["HIGH", "!aNULL; } server { listen 8081"], ["ECDHE-RSA-AES128-GCM-SHA256 AES256"], ["'HIGH'"], ["A:B"], []],
)
def test_a_cipher_string_that_leaves_its_directive_is_refused_naming_it(tmp_path, ciphers):
    done = preflight(tmp_path, ciphers)
    assert done.returncode != 0, done.stdout
    assert "nginx_tls_ciphers" in done.stdout and "is not a list of OpenSSL cipher names" in done.stdout, done.stdout


def test_the_default_cipher_string_passes_the_check(tmp_path):
    defaults = role_variables({})
    done = preflight(tmp_path, defaults["nginx_tls_ciphers"])
    assert done.returncode == 0, done.stdout + done.stderr


# Issue 20, item 4: each variable that reaches a template, with a value that ends its directive, opens a block,
# starts a comment or reads a variable; all in one run (the check names every bad value at once).
HOSTILE = {
    "nginx_routes": [
        # The injection of the review: a route path that closes its location and opens another; it passed nginx -t.
        {"path": "/api/ { return 200 'x'; } location /x", "upstream": "backend"},
        {"path": "/api/\nreturn 444", "upstream": "backend"},
        {"path": "/admin/", "upstream": "backend", "allow": ["10.0.0.0/8; allow all"]},
    ],
    "nginx_streaming_upstream": "backend",
    "nginx_streaming_paths": ["/sse/ { }"],
    "nginx_server_name": "example.com; return 301 https://evil",
    "nginx_health_path": "/h { }",
    "nginx_security_headers": {"X-A always; add_header X-B": "1", "X-Q": 'v" always; return 200 "x',
                               "X-V": "$http_cookie"},
    "nginx_upstreams": [{"service": "backend", "port": 8000},
                        {"name": "edge", "servers": [{"address": "a:1; server b:2"}]}],
    "nginx_proxy_read_timeout": "60s; proxy_pass http://evil",
    "nginx_access_log": "/var/log/a.log # x",
    "nginx_logrotate_paths": ["/var/log/nginx/*.log\n/etc/passwd {"],
}  # fmt: skip
NAMED = [
    "nginx_routes[0].path", "nginx_routes[1].path", "nginx_routes[2].allow[0]", "nginx_streaming_paths[0]",
    "nginx_server_name", "nginx_health_path", "nginx_security_headers key", "nginx_security_headers.X-Q",
    "nginx_security_headers.X-V", "nginx_upstreams[1].servers[0].address", "nginx_proxy_read_timeout",
    "nginx_access_log", "nginx_logrotate_paths[0]",
]  # fmt: skip


def test_a_value_that_would_leave_its_directive_is_refused_naming_it(tmp_path):
    """The check fails before anything changes, naming each variable with its bad value."""
    done = preflight(tmp_path, role_variables({})["nginx_tls_ciphers"], **HOSTILE)
    assert done.returncode != 0, done.stdout[-2000:]
    message = next((line for line in done.stdout.splitlines() if "Nothing was changed" in line), "")
    assert [name for name in NAMED if name + " " not in message] == [], done.stdout[-3000:]
    assert "nginx_security_headers.X-A " not in message  # a plain value of a bad header name is not bad itself


def test_ordinary_values_pass_the_check(tmp_path):
    """What operators write: a CSP header with ; and ', several server names, allow lists, the routes of the
    scenarios."""
    done = preflight(
        tmp_path,
        role_variables({})["nginx_tls_ciphers"],
        nginx_server_name="example.com www.example.com *.example.org",
        nginx_security_headers={"Content-Security-Policy": "default-src 'self'; img-src * data:", "X-Frame": "DENY"},
        nginx_routes=[{"path": "/admin/", "upstream": "backend", "allow": ["10.0.0.0/8", "::1"],
                       "extra": "proxy_set_header X-Admin \"1\";"}, {"path": "/", "upstream": "backend"}],
        nginx_extra_config="location = /robots.txt { return 200 \"User-agent: *\\nDisallow: /\\n\"; }",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_each_streaming_route_is_an_sse_location_of_its_own_upstream(tmp_path):
    """astron-agent's two streams go to two services; each location streams and is rate limited once."""
    if not os.path.exists("/etc/nginx/mime.types"):
        pytest.skip("needs nginx installed (apt-get install nginx) for mime.types")
    site = (write_tree(tmp_path, PLATFORM_ROUTES).parent / "conf.d" / "opsbook-site.conf").read_text()
    for index, service in ((0, "core-workflow"), (1, "console-hub")):
        location = site.split("# >>> nginx_routes[%d]" % index)[1].split("# <<< nginx_routes[%d]" % index)[0]
        assert 'set $opsbook_upstream "demo_%s.' % service in location, location
        assert "proxy_buffering off;" in location and "X-Accel-Buffering no" in location, location
        assert location.count("limit_req ") == 1, location
    ordinary = site.split("# >>> nginx_routes[2]")[1].split("# <<< nginx_routes[2]")[0]
    assert "proxy_buffering off;" not in ordinary and ordinary.count("limit_req ") == 1, ordinary
    assert "# >>> nginx_streaming_paths" not in site


def test_a_route_both_websocket_and_streaming_is_refused_naming_it(tmp_path):
    done = preflight(
        tmp_path,
        role_variables({})["nginx_tls_ciphers"],
        nginx_routes=[{"path": "/chat/", "upstream": "backend", "websocket": True, "streaming": True}],
    )
    assert done.returncode != 0, done.stdout[-2000:]
    assert "nginx_routes entry" in done.stdout and "not both" in done.stdout, done.stdout[-3000:]
