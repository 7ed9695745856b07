# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""promtool and amtool for the tests: the local binary when on PATH, else the sandbox image with `docker run`."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IMAGES = {
    "promtool": os.environ.get("OPSBOOK_PROMETHEUS_IMAGE", "127.0.0.1:5000/prometheus:2.42"),
    "amtool": os.environ.get("OPSBOOK_ALERTMANAGER_IMAGE", "127.0.0.1:5000/alertmanager:0.25"),
}


class Tool:
    """promtool or amtool, run in `workdir` (mounted at the same path when the tool runs in a container)."""

    def __init__(self, name: str):
        self.name = name
        self.local = shutil.which(name)
        self.docker = shutil.which("docker")

    def available(self) -> str | None:
        if self.local:
            return None
        if not self.docker:
            return f"{self.name} is not on PATH and docker is missing"
        probe = subprocess.run(
            [self.docker, "image", "inspect", IMAGES[self.name]], capture_output=True, text=True, check=False
        )
        if probe.returncode != 0:
            return (
                f"{self.name} is not on PATH and the image {IMAGES[self.name]} is missing: run `./dev sandbox` "
                f"(or install the Debian package prometheus / prometheus-alertmanager)"
            )
        return None

    def run(self, args: list[str], workdir: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
        if self.local:
            argv = [self.local, *args]
        else:
            argv = [
                self.docker or "docker",
                "run",
                "--rm",
                "-i",
                "--network",
                "none",
                "--user",
                "0:0",
                "-v",
                f"{workdir}:{workdir}",
                "-w",
                str(workdir),
                "--entrypoint",
                self.name,
                IMAGES[self.name],
                *args,
            ]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd=workdir, timeout=300, check=False)


def _tool(name: str) -> Tool:
    tool = Tool(name)
    problem = tool.available()
    assert problem is None, problem
    return tool


@pytest.fixture(scope="session")
def promtool() -> Tool:
    """promtool, local or from the sandbox image (import the fixture into a test module or conftest)."""
    return _tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> Tool:
    """amtool, local or from the sandbox image."""
    return _tool("amtool")
