# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Where the traffic of a service goes during a rolling upgrade: its Nginx upstream and the loopback gate.

Private to this collection: not a public API, it may change in any release.

The upstream file is rendered and activated by the one shared function (module_utils/_upstream.py); this file
only says what it should list. The gate is a temporary loopback server whose upstream is the new containers
only, so synthetic requests go through Nginx to them before any user request does.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import os
import re
import socket
import time

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient
from ansible_collections.opsbook.stack.plugins.module_utils._files import read_text
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.drain import nginx_workers
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import Settings, UpgradeError
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import (
    NginxControl,
    Server,
    Upstream,
    activate,
    render_upstream,
    sync_upstream,
    upstream_file_for,
    upstream_name,
)

GATE_LISTEN_WAIT_S = 10.0
_UPSTREAM_SERVER_RE = re.compile(r"^\s*server\s+(\S+?)(\s[^;]*)?;", re.M)
_GATE_SERVER = (
    "# The gate of opsbook.stack rolling_upgrade: synthetic requests reach the new containers through\n"
    "# Nginx before any user request does. Loopback only; removed when the gate is done.\n"
    "server {\n"
    "    listen 127.0.0.1:%d;\n"
    "    location / {\n"
    "        proxy_pass http://%s;\n"
    "        proxy_http_version 1.1;\n"
    "        proxy_set_header Connection \"\";\n"
    "        proxy_set_header Host $host;\n"
    "    }\n"
    "}\n"
)


def upstream_addresses(content: str | None) -> list[str]:
    return [m.group(1) for m in _UPSTREAM_SERVER_RE.finditer(content or "")]


class Traffic:
    """The upstream of each service of one project, and the gate; remembers the Nginx workers of before a switch
    (the only ones that still route to the containers switched away from, which the drain waits for)."""

    def __init__(self, settings: Settings, client: DockerClient):
        self.s = settings
        self.client = client
        self.nginx = NginxControl(binary=settings.nginx_binary, reload_command=settings.nginx_reload_command)
        self.workers_before_switch: set[int] = set()

    def upstream_path(self, service: str) -> str:
        return upstream_file_for(upstream_name(self.s.project, service), self.s.upstream_dir)

    def serving(self, service: str) -> list[str]:
        return upstream_addresses(read_text(self.upstream_path(service)))

    def switch(self, service: str, servers: list[Server]) -> None:
        self.workers_before_switch = nginx_workers()
        sync_upstream(self.s.project, service, servers=servers, directory=self.s.upstream_dir, nginx=self.nginx)

    def sync_from_docker(self, service: str, port: int | None) -> bool:
        return sync_upstream(
            self.s.project, service, port=port, directory=self.s.upstream_dir, nginx=self.nginx, docker=self.client
        ).changed

    def gate_file(self, service: str) -> str:
        return upstream_file_for(upstream_name(self.s.project, service) + "_gate", self.s.upstream_dir)

    def open_gate(self, service: str, servers: list[Server]) -> None:
        name = upstream_name(self.s.project, service) + "_gate"
        block = render_upstream(Upstream(name, tuple(servers), keepalive=8, source="the new containers under test"))
        activate(self.gate_file(service), block + _GATE_SERVER % (self.s.gate_port, name), nginx=self.nginx)
        # `systemctl reload` returns once the signal is sent; the master opens the new listener a moment later.
        deadline = time.monotonic() + GATE_LISTEN_WAIT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.s.gate_port), timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise UpgradeError(
                        "Nginx did not open the gate listener 127.0.0.1:%d within 10 s after the "
                        "reload (is the port taken? set gate_port)" % self.s.gate_port
                    ) from None
                time.sleep(0.05)

    def close_gate(self, service: str) -> None:
        if os.path.exists(self.gate_file(service)):
            activate(self.gate_file(service), None, nginx=self.nginx)


__all__ = ["Traffic", "upstream_addresses"]
