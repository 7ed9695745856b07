#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: nginx_upstream
short_description: Point Nginx at the healthy containers of a Compose service, without a reload
version_added: 0.1.0
description:
  - Asks the Docker Engine for the containers of a Compose service (labels C(com.docker.compose.project) and
    C(com.docker.compose.service)), keeps the running and healthy ones (a container without a healthcheck
    counts as healthy while it runs) and writes their bridge addresses to the service's hosts file,
    C(<directory>/hosts.d/<project>_<service>). The nginx role's resolver (dnsmasq) serves that file to Nginx as
    C(<project>_<service>.opsbook.internal), and the site proxies to that name with the container port
    (C(docs/routing.md)).
  - The file is written atomically and only when it changes. Nginx is not reloaded; it uses the new addresses
    within its resolver validity (1 s), and no keep-alive client connection is closed.
  - With O(servers) for a service, those servers (C(<ip>:<container port>)) are written as given. With O(name) and
    O(servers) alone (the app hosts behind an edge Nginx), an Nginx C(upstream) block is written to
    C(<directory>/<name>.conf); C(nginx -t) checks the whole configuration, Nginx is reloaded gracefully when it
    passes, and the previous file is put back when it fails, with Nginx's own error line.
  - When no container is healthy the module refuses to write a file without servers; the existing file
    stays and the task fails naming each container and why it was left out.
  - The nginx role, its routing watcher and the upgrade and rollback modules render with the same code
    (C(plugins/module_utils/_upstream.py)), so they always agree on the file, and every writer of Nginx
    configuration activates through the same function (C(plugins/module_utils/_nginx.py)) under one lock.
author:
  # validate-modules wants a GitHub handle or the marker !UNKNOWN after the name.
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
  - opsbook.stack.docker
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
    details: Docker is asked for real; nothing is written, tested or reloaded.
  diff_mode:
    support: full
  idempotent:
    support: full
    details: The same containers render the same bytes (servers sorted by address, no timestamps), so the
      second run writes nothing.
options:
  project:
    description:
      - Compose project name of the service (the C(com.docker.compose.project) label).
      - Required unless O(name) and O(servers) are given.
    type: str
  service:
    description:
      - Compose service name (the C(com.docker.compose.service) label).
      - Required unless O(name) and O(servers) are given.
    type: str
  name:
    description:
      - Name of the upstream and of its file (C(<directory>/hosts.d/<name>) for a service, C(<directory>/<name>.conf)
        for explicit servers).
      - Defaults to C(<project>_<service>), the name the nginx role's site resolves.
    type: str
  port:
    description:
      - The container port of the service, for example V(8000).
      - May be left out when the containers carry the C(io.opsbook.port) label or publish exactly one TCP port.
    type: int
  servers:
    description:
      - Explicit servers instead of the containers Docker reports.
      - For a service, C(<ipv4>:<container port>) on one port; weights cannot be expressed through the resolver
        (each address gets an equal share, and RV(note) says so).
    type: list
    elements: dict
    suboptions:
      address:
        description: V(host:port), V([ipv6]:port) or V(unix:/path).
        type: str
        required: true
      weight:
        description: Relative weight (1 or more) in the round robin.
        type: int
      max_fails:
        description: Failed attempts within O(servers[].fail_timeout) after which the server is left out.
        type: int
      fail_timeout:
        description: Nginx time such as V(10s).
        type: str
      backup:
        description: Only used when every other server is unavailable.
        type: bool
        default: false
      comment:
        description: A note written after the server line, for example the container name.
        type: str
        default: ""
  weights:
    description:
      - 'Weights of discovered containers by container name, for example V({"demo-backend-3": 1}).'
      - Containers not named keep the default weight of 1.
    type: dict
  state:
    description:
      - V(present) writes the upstream. V(absent) empties a service's hosts file (the resolver keeps the names of a
        removed file; Nginx answers 502 for the name), or removes the file of explicit servers (with the same
        check and restore).
    type: str
    choices: [present, absent]
    default: present
  directory:
    description: Directory of the upstream files; the nginx role's C(nginx.conf) includes C(upstreams.d/*.conf).
    type: path
    default: /etc/nginx/upstreams.d
  keepalive:
    description: Idle keepalive connections to the servers kept per worker; V(0) turns the pool off. Explicit
      servers under a name only.
    type: int
    default: 32
  zone_size:
    description: Size of the shared memory zone of the upstream. Explicit servers under a name only.
    type: str
    default: 64k
  host_ip:
    description: Not used since containers are reached at their bridge address; kept for playbooks of earlier
      releases.
    type: str
    default: 127.0.0.1
  reload:
    description: Reload Nginx gracefully after a change that passed C(nginx -t) (explicit servers under a name;
      a service's hosts file needs no reload). A stopped Nginx is not started.
    type: bool
    default: true
  nginx_binary:
    description: The nginx executable used for C(nginx -t) (and C(nginx -s reload) without systemd).
    type: path
    default: nginx
  nginx_config:
    description: Main configuration file to test; by default the one nginx was built with.
    type: path
  reload_command:
    description: The reload command as an argv list, instead of C(systemctl reload nginx) or C(nginx -s reload).
    type: list
    elements: str
  lock_path:
    description: Lock file that serializes every writer of this host's Nginx configuration.
    type: path
    default: /run/lock/opsbook-nginx.lock
  lock_timeout:
    description: Seconds to wait for another writer of the Nginx configuration before failing with its name.
    type: float
    default: 300
notes:
  - The bridge address is the container's IPv4 address on its first network by name (C(docker inspect)); a
    container with host networking is reached on 127.0.0.1.
  - Containers created by C(docker compose run) are never part of the upstream.
seealso:
  - name: ngx_http_upstream_module
    description: The upstream, server, zone and keepalive directives.
    link: https://nginx.org/en/docs/http/ngx_http_upstream_module.html
"""

EXAMPLES = r"""
- name: Point the backend upstream at the healthy containers of the service
  opsbook.stack.nginx_upstream:
    project: demo
    service: backend
    port: 8000
  register: backend_upstream

- name: Run it again; the containers did not change, so neither does the file (changed=false)
  opsbook.stack.nginx_upstream:
    project: demo
    service: backend
    port: 8000

- name: Explicit containers for a service, for example the new ones only at a switch
  opsbook.stack.nginx_upstream:
    project: demo
    service: backend
    servers:
      - {address: "172.18.0.5:8000", comment: demo-backend-3}
      - {address: "172.18.0.6:8000", comment: demo-backend-4}

- name: Edge Nginx, the app hosts' local Nginx on a fixed port
  opsbook.stack.nginx_upstream:
    name: app_hosts
    servers:
      - address: 10.0.0.11:8080
        max_fails: 2
        fail_timeout: 10s
      - address: 10.0.0.12:8080
        max_fails: 2
        fail_timeout: 10s

- name: Empty the upstream of a service that is gone
  opsbook.stack.nginx_upstream:
    project: demo
    service: legacy
    state: absent
"""

RETURN = r"""
upstream:
  description: Name of the upstream block.
  returned: always
  type: str
  sample: demo_backend
path:
  description: Path of the file (a service's hosts file, or the upstream block of explicit servers).
  returned: always
  type: str
  sample: /etc/nginx/upstreams.d/hosts.d/demo_backend
content:
  description: The file as rendered (empty when O(state=absent)).
  returned: always
  type: str
  sample: "# port 8000\n172.18.0.5 demo_backend.opsbook.internal  # demo-backend-1\n"
servers:
  description: The servers of the upstream, in file order.
  returned: when O(state=present)
  type: list
  elements: dict
  sample: [{"address": "172.18.0.5:8000", "weight": null, "max_fails": null, "fail_timeout": null,
            "backup": false, "comment": "demo-backend-1"}]
skipped:
  description: Containers of the service left out of the upstream, with the reason; C(leaving) is true for a
    container Docker has sent a stop signal (it may still run through its shutdown grace).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "demo-backend-2", "state": "running", "health": "starting", "reason": "health is starting",
            "leaving": false}]
reloaded:
  description: Whether Nginx was reloaded (never for a service's hosts file).
  returned: always
  type: bool
  sample: false
note:
  description: Why a changed file was not reloaded (check mode, Nginx not running, O(reload=false)), or that
    weights were given that the resolver cannot express.
  returned: always
  type: str
  sample: ""
nginx_error:
  description: Nginx's own error line when C(nginx -t) rejected the file (the previous file was put back).
  returned: failure
  type: str
  sample: 'nginx: [emerg] invalid parameter "weight=0" in /etc/nginx/upstreams.d/demo_backend.conf:5'
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._nginx import DEFAULT_LOCK_WAIT_S
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import (
    DEFAULT_HOST_IP,
    DEFAULT_KEEPALIVE,
    DEFAULT_LOCK_PATH,
    DEFAULT_NGINX_BINARY,
    DEFAULT_UPSTREAM_DIR,
    DEFAULT_ZONE_SIZE,
    NginxConfigRejected,
    NginxControl,
    Server,
    UpstreamError,
    empty_service_hosts,
    remove_upstream,
    sync_upstream,
    upstream_name,
)

SERVER_OPTIONS = dict(
    address=dict(type="str", required=True),
    weight=dict(type="int"),
    max_fails=dict(type="int"),
    fail_timeout=dict(type="str"),
    backup=dict(type="bool", default=False),
    comment=dict(type="str", default=""),
)


def _diff(path: str, before: str | None, after: str) -> dict:
    return {"before": before or "", "after": after, "before_header": path, "after_header": path}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            project=dict(type="str"),
            service=dict(type="str"),
            name=dict(type="str"),
            port=dict(type="int"),
            servers=dict(type="list", elements="dict", options=SERVER_OPTIONS),
            weights=dict(type="dict"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            directory=dict(type="path", default=DEFAULT_UPSTREAM_DIR),
            keepalive=dict(type="int", default=DEFAULT_KEEPALIVE),
            zone_size=dict(type="str", default=DEFAULT_ZONE_SIZE),
            host_ip=dict(type="str", default=DEFAULT_HOST_IP),
            reload=dict(type="bool", default=True),
            nginx_binary=dict(type="path", default=DEFAULT_NGINX_BINARY),
            nginx_config=dict(type="path"),
            reload_command=dict(type="list", elements="str"),
            lock_path=dict(type="path", default=DEFAULT_LOCK_PATH),
            lock_timeout=dict(type="float", default=DEFAULT_LOCK_WAIT_S),
            **docker_argument_spec(),
        ),
        required_together=[("project", "service")],
        required_one_of=[("name", "service")],
        mutually_exclusive=[("servers", "weights")],
        supports_check_mode=True,
    )
    p = module.params
    nginx = NginxControl(binary=p["nginx_binary"], config=p["nginx_config"], reload_command=p["reload_command"])
    common: dict[str, t.Any] = dict(
        nginx=nginx,
        check_mode=module.check_mode,
        reload=p["reload"],
        lock_path=p["lock_path"],
        lock_wait_s=p["lock_timeout"],
    )
    try:
        if p["state"] == "absent":
            name = p["name"] or upstream_name(p["project"], p["service"])
            done = remove_upstream(name, p["directory"], **common)
            if p["project"] and p["service"]:
                # The service's hosts file, and an upstream block of an earlier release (removed above).
                emptied = empty_service_hosts(name, p["directory"], check_mode=module.check_mode)
                if emptied.changed or not done.changed:
                    emptied.changed = emptied.changed or done.changed
                    done = emptied
            result: dict[str, t.Any] = dict(
                changed=done.changed,
                upstream=name,
                path=done.path,
                content="",
                skipped=[],
                reloaded=done.reloaded,
                note=done.note,
            )
            if done.changed and module._diff:
                result["diff"] = _diff(done.path, done.previous, "")
            module.exit_json(**result)
        servers = None
        if p["servers"] is not None:
            servers = [Server(**{k: v for k, v in item.items() if k in SERVER_OPTIONS}) for item in p["servers"]]
        synced = sync_upstream(
            p["project"],
            p["service"],
            name=p["name"],
            port=p["port"],
            servers=servers,
            weights=p["weights"],
            directory=p["directory"],
            keepalive=p["keepalive"],
            zone_size=p["zone_size"],
            host_ip=p["host_ip"],
            docker_host=p["docker_host"],
            **common,
        )
    except NginxConfigRejected as exc:
        module.fail_json(msg=str(exc), changed=False, nginx_error=exc.nginx_error, **exc.evidence)
    except UpstreamError as exc:
        module.fail_json(msg=str(exc), changed=False, **exc.evidence)
    result = synced.to_dict()
    if synced.changed and module._diff:
        result["diff"] = _diff(synced.path, synced.previous, synced.content)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
