# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The component options the backup and restore modules share (doc fragment ``opsbook.stack.backup``).

Private to this collection: not a public API, it may change in any release.

Plain data and the standard library (the package runs on hosts without Ansible); the modules add
``_argspec.docker_argument_spec()`` for ``docker_host``.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import typing as t

from ansible_collections.opsbook.stack.plugins.module_utils._backup.registry import ENGINES, TYPES
from ansible_collections.opsbook.stack.plugins.module_utils._backup.spec import (
    ComponentSpec,
    Settings,
    component_from_config,
)


def component_argument_spec() -> dict[str, t.Any]:
    """Options of one component, given directly or through the role's job file (``config``)."""
    return dict(
        component=dict(type="str", required=True),
        config=dict(type="path"),
        type=dict(type="str", choices=list(TYPES)),
        container=dict(type="str"),
        volume=dict(type="str"),
        path=dict(type="path"),
        api_port=dict(type="int", default=9090),
        user=dict(type="str", default=""),
        password=dict(type="str", default="", no_log=True),
        dest=dict(type="path", default="/var/backups/opsbook"),
        metrics_dir=dict(type="path", default=""),
        helper_image=dict(type="str", default=""),
        drill_prefix=dict(type="str", default="opsbook-drill-"),
    )


def component_module_rules() -> dict[str, t.Any]:
    """required_if, required_one_of and mutually_exclusive for AnsibleModule: each type names what it needs."""
    return dict(
        required_if=[("type", name, [engine.requires]) for name, engine in ENGINES.items()],
        required_one_of=[("config", "type")],
        mutually_exclusive=[("config", "type"), ("config", "container"), ("config", "volume"), ("config", "path")],
    )


def job_from_params(params: dict[str, t.Any], exclude: t.Iterable[str] = ()) -> tuple[Settings, ComponentSpec]:
    """The settings and component of a module call: from ``config`` when given, else from the options that
    name a ComponentSpec or Settings field (options left unset keep the field's default)."""
    if params.get("config"):
        return component_from_config(params["config"], params["component"])
    skip = set(exclude) | {"name"}

    def given(fields: t.Iterable[str]) -> dict[str, t.Any]:
        return {k: params[k] for k in fields if k not in skip and params.get(k) is not None}

    spec = ComponentSpec(name=params["component"], **given(ComponentSpec.__dataclass_fields__))
    settings = Settings(**given(Settings.__dataclass_fields__))
    return settings, spec
