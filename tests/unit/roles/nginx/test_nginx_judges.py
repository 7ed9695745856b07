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
VARIANTS = {
    "plain": {"nginx_upstreams": [{"service": "backend", "port": 8000}]},
    "tls": {**TLS, "nginx_upstreams": [{"service": "backend", "port": 8000}]},
    "tls-routes": {**TLS, **ROUTES},
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
    # gixy-ng is pinned in requirements.txt: missing, it is a broken venv, not a reason to skip.
    assert GIXY.exists(), "gixy-ng is not installed in %s (./dev venv installs requirements.txt)" % GIXY.parent
    done = subprocess.run([str(GIXY), str(rendered)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "No issues found." in done.stdout, done.stdout + done.stderr


def test_nginx_t_accepts_it(rendered):
    if os.geteuid() != 0 or not os.path.exists(NGINX):
        pytest.skip("nginx -t needs root and nginx")
    done = subprocess.run([NGINX, "-t", "-c", str(rendered)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def preflight(tmp_path: Path, ciphers: list) -> subprocess.CompletedProcess:
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
