# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Argument specs that several modules share, each documented by one doc fragment.

Private to this collection: not a public API, it may change in any release.

A module merges them into its own spec (``argument_spec=dict(**docker_argument_spec(), ...)``) and names the
fragment in ``extends_documentation_fragment``, so an option means the same thing in every module.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import typing as t

from ansible.module_utils.basic import env_fallback

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DEFAULT_DOCKER_HOST
from ansible_collections.opsbook.stack.plugins.module_utils._http import DEFAULT_TIMEOUT


def docker_argument_spec() -> dict[str, t.Any]:
    """``docker_host`` with the ``DOCKER_HOST`` fallback (doc fragment ``opsbook.stack.docker``)."""
    return dict(
        docker_host=dict(type="str", default=DEFAULT_DOCKER_HOST, fallback=(env_fallback, ["DOCKER_HOST"])),
    )


def http_argument_spec() -> dict[str, t.Any]:
    """The client options of an HTTP API, named as in ``ansible.builtin.url`` (fragment ``opsbook.stack.http_client``).

    ``url`` stays with each module: what it points at is the module's own business. _http.HttpSettings.from_params
    reads these back.
    """
    return dict(
        timeout=dict(type="float", default=DEFAULT_TIMEOUT),
        validate_certs=dict(type="bool", default=True),
        ca_path=dict(type="path"),
        client_cert=dict(type="path"),
        client_key=dict(type="path"),
        url_username=dict(type="str"),
        url_password=dict(type="str", no_log=True),
        force_basic_auth=dict(type="bool", default=False),
        use_proxy=dict(type="bool", default=True),
        headers=dict(type="dict", default={}),
    )


__all__ = ["docker_argument_spec", "http_argument_spec"]
