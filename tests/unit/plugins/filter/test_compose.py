# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compose_project filter: presets, loopback publishing, secret references, clear errors."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.opsbook.stack.plugins.filter.compose import compose_project, web_services

DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[4] / "roles/compose_app/defaults/main.yml").read_text())
PRESETS = DEFAULTS["compose_app_presets"]


def render(services, settings=None, project="demo"):
    return compose_project(services, project, PRESETS, settings or {"secret_names": ["DB_PASS", "ROOT_PASS"]})


def stack():
    return {
        "backend": {
            "image": "reg/backend",
            "tag": "1.0",
            "preset": "web",
            "replicas": 2,
            "environment": {"A": "x$y", "DEBUG": False},
            "secret_env": ["DB_PASSWORD=DB_PASS"],
            "depends_on": ["db", "cache"],
        },
        "db": {"image": "reg/mariadb", "tag": "10.11", "preset": "mariadb", "secret_env": ["ROOT_PASS"]},
        "cache": {"image": "reg/redis", "tag": "7.0", "preset": "redis"},
    }


def test_web_service_replicas_on_loopback_ephemeral_ports():
    doc = render(stack())
    backend = doc["services"]["backend"]
    assert backend["ports"] == ["127.0.0.1::8000"]
    assert backend["deploy"] == {"replicas": 2}
    assert backend["labels"]["io.opsbook.role"] == "web"
    assert backend["labels"]["io.opsbook.port"] == "8000"


def test_seed_health_checks_come_from_presets():
    doc = render(stack())
    db = doc["services"]["db"]["healthcheck"]
    assert db["test"] == ["CMD", "mysqladmin", "ping", "-h", "127.0.0.1"]
    assert (db["interval"], db["timeout"], db["retries"]) == ("30s", "20s", 10)
    cache = doc["services"]["cache"]["healthcheck"]
    assert (cache["interval"], cache["timeout"], cache["retries"]) == ("30s", "10s", 3)
    web = doc["services"]["backend"]["healthcheck"]
    assert "http://127.0.0.1:8000/health" in web["test"][1]
    assert (web["interval"], web["timeout"], web["retries"]) == ("30s", "10s", 3)


def test_healthcheck_overrides_apply_to_every_service():
    doc = render(stack(), {"secret_names": ["DB_PASS", "ROOT_PASS"], "healthcheck_overrides": {"interval": "5s"}})
    assert {s["healthcheck"]["interval"] for s in doc["services"].values()} == {"5s"}


def test_secrets_are_references_and_plain_values_are_literal():
    doc = render(stack())
    env = doc["services"]["backend"]["environment"]
    assert env["DB_PASSWORD"] == "${DB_PASS:?DB_PASS is missing from .env}"
    assert env["A"] == "x$$y"
    assert env["DEBUG"] == "false"


def test_depends_on_waits_for_healthy_dependencies_and_named_volumes_are_declared():
    doc = render(stack())
    assert doc["services"]["backend"]["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "cache": {"condition": "service_healthy"},
    }
    assert doc["services"]["db"]["volumes"] == ["db-data:/var/lib/mysql"]
    assert doc["volumes"] == {"cache-data": {}, "db-data": {}}


def test_logging_settings_reach_every_service():
    logging = {"driver": "json-file", "options": {"max-size": "50m", "max-file": "5"}}
    doc = render(stack(), {"secret_names": ["DB_PASS", "ROOT_PASS"], "logging": logging})
    assert all(s["logging"] == logging for s in doc["services"].values())


def test_disabled_service_is_left_out():
    services = stack()
    services["cache"]["enabled"] = False
    services["backend"]["depends_on"] = ["db"]
    assert "cache" not in render(services)["services"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["backend"].pop("tag"), "compose_app_services.backend: 'tag' is required"),
        (lambda s: s["backend"].update(preset="nope"), "preset 'nope' is not one of"),
        (
            lambda s: s["backend"].update(secret_env=["X"]),
            "secret_env names 'X', which compose_app_secrets does not define",
        ),
        (lambda s: s["backend"].update(depends_on=["ghost"]), "depends_on 'ghost', which is not a service"),
        (lambda s: s["db"].update(replicas=2), "compose_app_services.db: replicas > 1 only for stateless web services"),
        (lambda s: s["backend"].update(ports=["0.0.0.0:80:8000"]), "would listen on every address"),
        (lambda s: s["backend"].update(imgae="typo"), "unknown keys ['imgae']"),
    ],
)
def test_bad_definitions_name_the_service_and_the_fix(mutate, message):
    services = stack()
    mutate(services)
    with pytest.raises(AnsibleFilterError, match=r".*") as err:
        render(services)
    assert message in str(err.value)


def test_bad_project_name_is_refused():
    with pytest.raises(AnsibleFilterError, match="compose_app_project 'My App'"):
        render(stack(), project="My App")


def test_web_services_lists_ports():
    assert web_services(stack(), PRESETS) == {"backend": 8000}
