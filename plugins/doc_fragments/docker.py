# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name


class ModuleDocFragment:
    """The Docker Engine connection every module that talks to Docker shares (module_utils/_argspec.py)."""

    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - Docker Engine API endpoint on the target, as V(unix:///path/to/docker.sock) or V(tcp://host:port)
        (plain HTTP, no TLS).
      - Falls back to the E(DOCKER_HOST) environment variable of the target when not set.
    type: str
    default: unix:///var/run/docker.sock
"""
