# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Ansible side of rolling_upgrade and rollback: their shared options, and the one body of both modules.

Private to this collection: not a public API, it may change in any release.

The options are documented by the doc fragments ``opsbook.stack.upgrade`` (COMMON_OPTIONS) and
``opsbook.stack.docker`` (docker_host, module_utils/_argspec.py). ``run_module`` is what both modules' main()
does once they have built their AnsibleModule.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._journal import DEFAULT_ROOT
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.execute import rollback, rolling_upgrade
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import BadRequest, Settings, UpgradeError
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import DEFAULT_UPSTREAM_DIR

KINDS = ("upgrade", "rollback")

# Documented in doc_fragments/upgrade.py.
COMMON_OPTIONS: dict[str, dict[str, t.Any]] = dict(
    project=dict(type="str", required=True),
    project_dir=dict(type="path"),
    pull=dict(type="str", choices=["missing", "always"], default="missing"),
    journal_root=dict(type="path", default=DEFAULT_ROOT),
    keep=dict(type="int", default=10),
    lock_timeout=dict(type="float", default=0),
    health_timeout=dict(type="float", default=300),
    readiness_path=dict(type="str", default="/health"),
    gate_requests=dict(type="int", default=10),
    gate_port=dict(type="int", default=8099),
    canary_weight=dict(type="int", default=0),
    canary_s=dict(type="float", default=30),
    bake_s=dict(type="float", default=30),
    bake_paths=dict(type="list", elements="str", default=[]),
    bake_rate=dict(type="float", default=10),
    bake_min_requests=dict(type="int", default=20),
    bake_max_error_ratio=dict(type="float", default=0.01),
    bake_max_latency_ms=dict(type="float", default=1000),
    drain_timeout=dict(type="float", default=300),
    nginx_url=dict(type="str", default="http://127.0.0.1"),
    nginx_host_header=dict(type="str", default=""),
    upstream_dir=dict(type="path", default=DEFAULT_UPSTREAM_DIR),
    access_log=dict(type="path", default="/var/log/nginx/access.log"),
)


def argument_spec(**own: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
    """A module's own options, the shared ones and docker_host."""
    return dict(**own, **COMMON_OPTIONS, **docker_argument_spec())


def settings_from_params(p: dict[str, t.Any], check_mode: bool, docker_health_gate: bool = True) -> Settings:
    return Settings(
        project=p["project"],
        project_dir=p["project_dir"] or os.path.join("/opt", p["project"]),
        journal_root=p["journal_root"],
        docker_host=p["docker_host"],
        pull=p["pull"],
        lock_timeout_s=p["lock_timeout"],
        keep=p["keep"],
        docker_health_gate=docker_health_gate,
        health_timeout_s=p["health_timeout"],
        readiness_path=p["readiness_path"],
        gate_requests=p["gate_requests"],
        gate_port=p["gate_port"],
        nginx_url=p["nginx_url"],
        nginx_host_header=p["nginx_host_header"],
        bake_s=p["bake_s"],
        bake_paths=list(p["bake_paths"] or []),
        bake_rate=p["bake_rate"],
        bake_min_requests=p["bake_min_requests"],
        bake_max_error_ratio=p["bake_max_error_ratio"],
        bake_max_latency_ms=p["bake_max_latency_ms"],
        canary_weight=p["canary_weight"],
        canary_s=p["canary_s"],
        drain_timeout_s=p["drain_timeout"],
        upstream_dir=p["upstream_dir"],
        access_log=p["access_log"],
        check_mode=check_mode,
    )


def run_kind(kind: str, params: dict[str, t.Any], check_mode: bool) -> dict[str, t.Any]:
    """An upgrade (params["services"]) or a rollback (params["release"], params["wait_docker_health"])."""
    if kind == "upgrade":
        settings = settings_from_params(params, check_mode)
        return rolling_upgrade(settings, {str(k): v for k, v in params["services"].items()})
    if kind == "rollback":
        settings = settings_from_params(params, check_mode, params["wait_docker_health"])
        return rollback(settings, params["release"])
    raise ValueError("kind must be one of %s, got %r" % (", ".join(KINDS), kind))


def run_module(module: t.Any, kind: str) -> None:
    """The body of the rolling_upgrade and rollback modules: run, then exit_json or fail_json with the evidence."""
    if not 0 <= module.params["canary_weight"] < 100:
        module.fail_json(msg="canary_weight must be from 0 (no canary) to 99, got %d" % module.params["canary_weight"])
    try:
        result = run_kind(kind, module.params, module.check_mode)
    except BadRequest as exc:
        module.fail_json(msg=str(exc), changed=False, **exc.result)
    except UpgradeError as exc:
        result = dict(exc.result)
        changed = result.pop("changed", True)
        for warning in result.pop("warnings", []):
            module.warn(warning)
        module.fail_json(msg=str(exc), changed=changed, **result)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


__all__ = ["COMMON_OPTIONS", "KINDS", "argument_spec", "run_kind", "run_module", "settings_from_params"]
