# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""rolling_upgrade and rollback as Ansible runs them: bad arguments fail before anything is touched, and the
documentation matches the argument spec. The upgrades themselves run against the real engine in molecule/upgrade."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name


import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.doc_fragments.docker import ModuleDocFragment as DockerDocFragment
from ansible_collections.opsbook.stack.plugins.doc_fragments.upgrade import ModuleDocFragment
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import COMMON_OPTIONS, argument_spec
from ansible_collections.opsbook.stack.plugins.modules import release_info, release_record, rollback, rolling_upgrade
from ansible_collections.opsbook.stack.tests.unit.module_args import run_module


@pytest.mark.parametrize(
    "services, message",
    [
        ({}, "services is empty"),
        ({"backend": ""}, "no tag given for backend"),
        ({"backend": "2.0", "frontend": "  "}, "no tag given for frontend"),
    ],
)
def test_missing_tags_fail_before_anything(tmp_path, capsys, services, message):
    result = run_module(
        rolling_upgrade,
        {"project": "demo", "project_dir": str(tmp_path), "services": services, "journal_root": str(tmp_path / "j")},
        capsys,
    )
    assert result["failed"] is True and result["changed"] is False
    assert message in result["msg"]
    assert not (tmp_path / "j").exists()  # not even the lock was taken


@pytest.mark.parametrize("tag", [2.1, 3, True])
def test_a_tag_yaml_read_as_a_number_is_refused_before_anything(tmp_path, capsys, tag):
    # `backend: 2.10` unquoted in an inventory arrives as the float 2.1: another version would be deployed.
    result = run_module(
        rolling_upgrade,
        {
            "project": "demo",
            "project_dir": str(tmp_path),
            "services": {"backend": tag},
            "journal_root": str(tmp_path / "j"),
        },
        capsys,
    )
    assert result["failed"] is True and result["changed"] is False
    assert "tag of service backend is the" in result["msg"] and "quote it" in result["msg"]
    assert not (tmp_path / "j").exists()


def test_a_project_without_compose_file_is_refused(tmp_path, capsys):
    result = run_module(
        rolling_upgrade, {"project": "demo", "project_dir": str(tmp_path), "services": {"backend": "2.0"}}, capsys
    )
    assert result["failed"] is True and "compose.yaml does not exist" in result["msg"]


def test_canary_weight_out_of_range(tmp_path, capsys):
    result = run_module(
        rolling_upgrade,
        {"project": "demo", "project_dir": str(tmp_path), "canary_weight": 100, "services": {"backend": "2.0"}},
        capsys,
    )
    assert result["failed"] is True and "canary_weight" in result["msg"]


def test_rollback_to_an_unknown_release_fails_naming_it(tmp_path, capsys):
    (tmp_path / "compose.yaml").write_text("name: demo\nservices: {}\n")
    result = run_module(
        rollback,
        {"project": "demo", "project_dir": str(tmp_path), "release": "r-nosuch", "journal_root": str(tmp_path / "j")},
        capsys,
    )
    assert result["failed"] is True and result["changed"] is False
    assert "release 'r-nosuch' is not in" in result["msg"]


@pytest.mark.parametrize("module", [rolling_upgrade, rollback])
def test_documentation_matches_the_argument_spec(module):
    documented = dict(yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"])
    documented.update(yaml.safe_load(DockerDocFragment.DOCUMENTATION)["options"])
    documented.update(yaml.safe_load(module.DOCUMENTATION).get("options") or {})
    for name, spec in {**COMMON_OPTIONS, **argument_spec()}.items():
        assert name in documented, name
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name


@pytest.mark.parametrize("module", [rolling_upgrade, rollback, release_info, release_record])
def test_docker_host_comes_from_the_shared_fragment(module):
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert "opsbook.stack.docker" in doc["extends_documentation_fragment"]
    assert "docker_host" not in (doc.get("options") or {})
