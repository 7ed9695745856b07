# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The web presets' health probe, run as Docker runs it (`sh -c`) in an image without curl: slim Python images,
which most FastAPI backends use, have none, and the probe must fall back to Python's urllib. The sandbox's demo
images carry curl (their probes run every few seconds, and curl is the cheaper one), so nothing else exercises
the fallback against a real server."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.docker

DEFAULTS = Path(__file__).resolve().parents[4] / "roles" / "compose_app" / "defaults" / "main.yml"
IMAGE = "opsbook/debian:bookworm"  # the sandbox's base: python3, no curl


def probe(preset: str, port: int, path: str) -> str:
    test = yaml.safe_load(DEFAULTS.read_text())["compose_app_presets"][preset]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    return test[1].replace("{port}", str(port)).replace("{path}", path)


def in_image(script: str) -> subprocess.CompletedProcess:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI")
    have = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False)
    if have.returncode != 0:
        pytest.skip("sandbox image %s missing (./dev sandbox)" % IMAGE)
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", IMAGE, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("preset, port, path", [("web", 8000, "/health"), ("frontend", 8080, "/")])
def test_the_probe_falls_back_to_python_where_the_image_has_no_curl(preset, port, path):
    command = probe(preset, port, path)
    script = (
        "command -v curl && exit 9; mkdir -p /srv/www && cd /srv/www && echo ok > health && "
        "(python3 -m http.server %d --bind 127.0.0.1 >/dev/null 2>&1 &) && "
        "for i in $(seq 50); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", %d), 1)' "
        "2>/dev/null && break; sleep 0.1; done; "
        "%s; echo up=$?; %s; echo missing=$?"
    ) % (port, port, command, command.replace(str(port), str(port + 1)))
    done = in_image(script)
    assert done.returncode == 0, done.stdout + done.stderr
    # Served: 0. Nothing listening on the port: not 0, so Docker counts a failed check.
    assert "up=0" in done.stdout, done.stdout + done.stderr
    assert "missing=0" not in done.stdout and "missing=" in done.stdout, done.stdout
