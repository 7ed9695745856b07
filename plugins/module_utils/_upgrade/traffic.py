# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Where the traffic of a service goes during a rolling upgrade: its hosts file and the loopback gate.

Private to this collection: not a public API, it may change in any release.

docs/routing.md: Nginx resolves each service's name through the local resolver, which serves the service's hosts
file; the one shared function (module_utils/_upstream.py) renders and writes that file, and this module only says
what it should list. A switch, the gate opening and closing and the final re-read from Docker are atomic writes of
hosts files: Nginx is not reloaded, so no keep-alive client connection is closed. The gate is a loopback server
that proxies to the name ``<project>_<service>_gate``, which lists the new containers only, so synthetic requests
go through Nginx to them before any user request does; they name their service in X-Opsbook-Gate, which the
block's map turns into that service's gate name and port. The nginx role renders the block ahead for every
service of its project; the module writes it (with nginx -t and a reload) only for a service or port the block
does not map. Closing the gate empties its name.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import re
import socket
import time

from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerClient
from ansible_collections.opsbook.stack.plugins.module_utils._files import read_text
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import Settings, UpgradeError
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import (
    RESOLVER_VALID_S,
    NginxControl,
    Server,
    activate,
    hosts_addresses,
    hosts_file_for,
    render_hosts,
    route_host,
    sync_upstream,
    upstream_file_for,
    upstream_name,
    write_hosts,
)

GATE_LISTEN_WAIT_S = 10.0
# Margin on top of the resolver's validity: the workers' cached answers have expired for sure after it.
RESOLVER_MARGIN_S = 0.25
# Synthetic requests name the service whose new containers they are for; the gate's map sends each to that
# service's gate name and port. One server block serves every service of a project, so the nginx role renders it
# ahead for all of them and no upgrade of any service reloads Nginx (a reload closes idle keep-alive client
# connections, and a client that sends on one at that moment loses its request).
GATE_HEADER = "X-Opsbook-Gate"
_GATE_SERVER = (
    "# The gate of opsbook.stack rolling_upgrade: synthetic requests reach the new containers through Nginx\n"
    "# before any user request does. Loopback only. The name lists the new containers while a gate is open and\n"
    "# nothing otherwise (Nginx answers 502); opening and closing it writes %(hosts)s, no reload.\n"
    "map $http_x_opsbook_gate $%(variable)s {\n"
    '    default "%(default)s";\n'
    '    "%(service)s" "%(host)s:%(service_port)d";\n'
    "}\n"
    "server {\n"
    "    listen 127.0.0.1:%(port)d;\n"
    "    location / {\n"
    "        proxy_pass http://$%(variable)s;\n"
    "        proxy_http_version 1.1;\n"
    '        proxy_set_header Connection "";\n'
    "        proxy_set_header Host $host;\n"
    "        proxy_set_header %(header)s \"\";\n"
    "    }\n"
    "}\n"
)


_GATE_LISTEN_RE = re.compile(r"^\s*listen 127\.0\.0\.1:([0-9]+);", re.M)


def gate_variable(project: str) -> str:
    """The Nginx variable of a project's gate map (Nginx variable names have no '-')."""
    return "opsbook_gate_" + re.sub(r"[^A-Za-z0-9_]", "_", project)


def gate_block_serves(content: str | None, gate_port: int, host: str, service_port: int, service: str = "") -> bool:
    """Whether a gate server block (this module's, or the one the nginx role renders ahead for every service of the
    project) already listens on gate_port and maps the service to host:service_port: then opening the gate needs
    no reload. service: the name the synthetic requests send in X-Opsbook-Gate (any, when empty)."""
    listen = _GATE_LISTEN_RE.search(content or "")
    if listen is None or int(listen.group(1)) != gate_port:
        return False
    key = re.escape(service) if service else r"[^\"]+"
    target = re.compile(r'^\s*"%s"\s+"%s:%d";\s*$' % (key, re.escape(host), service_port), re.M)
    return target.search(content or "") is not None


def upstream_addresses(content: str | None) -> list[str]:
    """The `<ip>:<port>` addresses a service's hosts file lists."""
    return hosts_addresses(content)


def _port_of(servers: list[Server]) -> int:
    return int(servers[0].address.rpartition(":")[2])


class Traffic:
    """The hosts file of each service of one project, and the gate.

    `last_switch_at` (time.monotonic() of the last write that changed a service's addresses) and
    `resolver_valid_s` tell the drain when no Nginx worker can pick an old address any more: at
    last_switch_at + resolver_valid_s + a margin (`switch_settled_at`); `switch` waits for that moment before it
    returns. From then on only requests and streams already sent to an old container (established connections
    from this host to its address) remain.
    """

    def __init__(self, settings: Settings, client: DockerClient):
        self.s = settings
        self.client = client
        self.nginx = NginxControl(binary=settings.nginx_binary, reload_command=settings.nginx_reload_command)
        # No reload happens at a switch, so no Nginx worker of an older configuration is left to wait for.
        self.workers_before_switch: set[int] = set()
        self.resolver_valid_s: float = float(RESOLVER_VALID_S)
        self.last_switch_at: float | None = None

    def switch_settled_at(self) -> float | None:
        """time.monotonic() after which no worker resolves a service to addresses of before the last switch."""
        if self.last_switch_at is None:
            return None
        return self.last_switch_at + self.resolver_valid_s + RESOLVER_MARGIN_S

    def upstream_path(self, service: str) -> str:
        return hosts_file_for(upstream_name(self.s.project, service), self.s.upstream_dir)

    def serving(self, service: str) -> list[str]:
        return upstream_addresses(read_text(self.upstream_path(service)))

    def switch(self, service: str, servers: list[Server]) -> None:
        """Write the service's addresses; return once no worker can pick the old ones any more.

        Waiting out the resolver validity here (about 1.25 s, only when the addresses changed) means that when a
        switch returns, whatever comes next (a bake, or removing the containers switched away from after an undo)
        sees new requests on the new addresses only; the old containers keep only what was already sent to them.
        """
        done = sync_upstream(self.s.project, service, servers=servers, directory=self.s.upstream_dir)
        if done.changed:
            self.last_switch_at = time.monotonic()
            self.wait_switch_settled()

    def wait_switch_settled(self) -> None:
        settled = self.switch_settled_at()
        if settled is not None:
            time.sleep(max(0.0, settled - time.monotonic()))

    def sync_from_docker(self, service: str, port: int | None) -> bool:
        done = sync_upstream(self.s.project, service, port=port, directory=self.s.upstream_dir, docker=self.client)
        if done.changed:
            self.last_switch_at = time.monotonic()
        return done.changed

    def gate_name(self, service: str) -> str:
        return upstream_name(self.s.project, service) + "_gate"

    def gate_file(self, service: str) -> str:
        """The gate's server block (one per project: the gate port is the project's)."""
        return upstream_file_for(self.s.project + "_gate", self.s.upstream_dir)

    def open_gate(self, service: str, servers: list[Server]) -> float:
        """List the new containers under the gate's name; returns the time.monotonic() after which no Nginx
        worker can still hold the closed gate's empty answer (until then a synthetic request may get a 502)."""
        name = self.gate_name(service)
        hosts = hosts_file_for(name, self.s.upstream_dir)
        write_hosts(hosts, render_hosts(name, servers))
        block = _GATE_SERVER % {
            "hosts": hosts,
            "port": self.s.gate_port,
            "host": route_host(name),
            "service_port": _port_of(servers),
            "service": service,
            "variable": gate_variable(self.s.project),
            "default": route_host(upstream_name(self.s.project, "none_gate")) + ":9",
            "header": GATE_HEADER,
        }
        if not gate_block_serves(
            read_text(self.gate_file(service)), self.s.gate_port, route_host(name), _port_of(servers), service
        ):
            activate(self.gate_file(service), block, nginx=self.nginx)
        written = time.monotonic()
        self._wait_gate_listener()
        # A worker may hold the closed gate's empty answer for up to the resolver's validity: the gate's caller
        # retries a 502 until then instead of sleeping the whole validity away.
        return written + self.resolver_valid_s + RESOLVER_MARGIN_S

    def _wait_gate_listener(self) -> None:
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
        name = self.gate_name(service)
        hosts = hosts_file_for(name, self.s.upstream_dir)
        if read_text(hosts) is not None:
            write_hosts(hosts, render_hosts(name, [], allow_empty=True))


__all__ = ["GATE_HEADER", "RESOLVER_MARGIN_S", "Traffic", "gate_block_serves", "gate_variable", "upstream_addresses"]
