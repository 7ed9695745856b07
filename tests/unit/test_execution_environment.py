# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""AWX/AAP fit (issue 20, item 7), judged by ansible-builder itself: it reads the collection's controller-side
needs from meta/execution-environment.yml (the SSH client, no Python package, none of the development tooling),
and the example execution-environment.yml gives a build context with the tested ansible-core and
ansible-runner and the built collection. No image is built here (no container registry)."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUILDER = BIN / "ansible-builder"


def sh(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, timeout=300, check=False)
    assert done.returncode == 0, "%s: %s %s" % (args, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The collection as Galaxy ships it: built from this checkout (build_ignore applied)."""
    assert BUILDER.exists(), "ansible-builder is not installed in %s (./dev venv installs requirements-dev.txt)" % BIN
    out = tmp_path_factory.mktemp("built")
    sh(str(BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(out), str(ROOT))
    return next(out.glob("opsbook-stack-*.tar.gz"))


def test_builder_finds_the_collections_own_needs_and_none_of_the_dev_tooling(built, tmp_path):
    installed = tmp_path / "collections"
    # --force: the checkout in ANSIBLE_COLLECTIONS_PATH would otherwise count as installed already.
    sh(str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "--no-deps", "--force", "-p", str(installed),
       str(built))  # fmt: skip
    found = yaml.safe_load(sh(str(BUILDER), "introspect", "--sanitize", str(installed)))
    assert found["python"] in ([], None)  # the plugins use the standard library only
    assert [line.split("#")[0].strip() for line in found["system"]] == [
        "openssh-clients [platform:rpm]",
        "openssh-client [platform:dpkg]",
    ]
    shipped = {p.name for p in (installed / "ansible_collections" / "opsbook" / "stack").iterdir()}
    assert "requirements-dev.txt" not in shipped and "requirements.txt" not in shipped


def test_the_example_definition_gives_a_build_context_with_the_tested_versions(built, tmp_path):
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert built.name == "opsbook-stack-%s.tar.gz" % galaxy["version"]
    definition = (ROOT / "execution-environment.yml").read_text()
    assert built.name in definition, "execution-environment.yml names another version than galaxy.yml's"
    shutil.copy(ROOT / "execution-environment.yml", tmp_path)
    shutil.copy(built, tmp_path)
    sh(str(BUILDER), "create", "-f", "execution-environment.yml", "-c", "context", cwd=tmp_path)
    containerfile = (tmp_path / "context" / "Dockerfile").read_text()
    pins = dict(
        re.findall(r"^(ansible-core|ansible-runner)==(\S+)$", (ROOT / "requirements-dev.txt").read_text(), re.M)
    )
    assert 'ANSIBLE_INSTALL_REFS="ansible-core==%s ansible-runner==%s"' % (
        pins["ansible-core"], pins["ansible-runner"]) in containerfile  # fmt: skip
    assert (tmp_path / "context" / "_build" / built.name).exists()
    wanted = yaml.safe_load((tmp_path / "context" / "_build" / "requirements.yml").read_text())["collections"]
    assert {"name": "/build/%s" % built.name, "type": "file"} in wanted
    assert any(c["name"] == "community.docker" for c in wanted)
