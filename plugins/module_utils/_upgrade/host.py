# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The pieces of the host a rolling upgrade works with, wired once per run.

Private to this collection: not a public API, it may change in any release.

Each piece is one mechanism in its own file: the compose file edit, the compose CLI, Docker's facts, the Nginx
upstream and gate, the access log. Tests give a run their own pieces instead.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.bake import AccessLog
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_cli import ComposeCli
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_file import ComposeFile
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.docker_facts import DockerFacts
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import Settings
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.traffic import Traffic

ENGINE_TIMEOUT_S = 60.0


class Host:
    """settings, the Engine client, and the pieces built on them."""

    def __init__(self, settings: Settings, client: DockerClient | None = None):
        self.s = settings
        self.client = client or DockerClient(settings.docker_host, timeout=ENGINE_TIMEOUT_S)
        self.compose = ComposeCli(settings.project, settings.project_dir, settings.compose_file)
        self.compose_file = ComposeFile(settings.compose_file, lambda path: self.compose.config(compose_file=path))
        self.docker = DockerFacts(self.client, settings.project)
        self.traffic = Traffic(settings, self.client)
        self.access_log = AccessLog(settings.access_log)


__all__ = ["Host"]
