# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Under CI=true a Docker test that cannot reach the Engine or an image fails, and so does a test that lacks a
system package ./dev deps installs; locally they still skip.

The hook lives in tests/unit/conftest.py; this runs it as a plugin of a separate pytest on three sample tests.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.opsbook.stack import plugins

# The directory that holds ansible_collections/opsbook/stack (tests/unit/conftest.py makes it).
COLLECTIONS_ROOT = Path(plugins.__path__[0]).parents[3]

SAMPLE = '''
import pytest

@pytest.mark.docker
def test_needs_the_engine():
    pytest.skip("no Docker Engine socket at /nowhere/docker.sock")

@pytest.mark.docker
def test_needs_root_too():
    pytest.skip("mounting a tmpfs needs root")

def test_not_a_docker_test():
    pytest.skip("no Docker here, but this test does not need it")
'''


# A test that skips for want of a package ./dev deps installs (tests/unit/roles/nginx/test_nginx_routing.py).
DEPS_SAMPLE = '''
import pytest

def test_needs_a_package():
    pytest.skip("needs dnsmasq (./dev deps installs dnsmasq-base)")
'''


def run_sample(tmp_path, ci: str | None, sample: str = SAMPLE) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(sample)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(COLLECTIONS_ROOT), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rfs",
        "-p",
        "no:cacheprovider",
        "-p",
        "ansible_collections.opsbook.stack.tests.unit.conftest",
        str(tmp_path / "test_sample.py"),
    ]
    return subprocess.run(argv, capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=120, check=False)


def test_under_ci_a_docker_test_without_the_engine_fails_naming_why(tmp_path):
    proc = run_sample(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "1 failed, 2 skipped" in proc.stdout
    assert "CI=true: test_sample.py::test_needs_the_engine needs Docker and would have skipped" in proc.stdout
    assert "no Docker Engine socket at /nowhere/docker.sock" in proc.stdout


def test_without_ci_every_one_of_them_skips(tmp_path):
    proc = run_sample(tmp_path, None)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "3 skipped" in proc.stdout


def test_under_ci_a_test_without_a_package_dev_deps_installs_fails(tmp_path):
    proc = run_sample(tmp_path, "true", DEPS_SAMPLE)
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout[-3000:]
    assert "CI=true: test_sample.py::test_needs_a_package would have skipped" in proc.stdout
    assert "Run ./dev deps as root" in proc.stdout
    proc = run_sample(tmp_path, None, DEPS_SAMPLE)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-3000:]
