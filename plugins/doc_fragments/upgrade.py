# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name


class ModuleDocFragment:
    """Options rolling_upgrade and rollback share: the gate, the bake, the drain, the journal and the lock
    (docker_host comes from the opsbook.stack.docker fragment)."""

    DOCUMENTATION = r"""
options:
  project:
    description: Compose project name (the C(com.docker.compose.project) label).
    type: str
    required: true
  project_dir:
    description: Directory of the project's C(compose.yaml) and C(.env). Defaults to C(/opt/<project>).
    type: path
  pull:
    description: V(missing) pulls a target image only when the host does not have it; V(always) pulls every time.
    type: str
    choices: [missing, always]
    default: missing
  journal_root:
    description: Directory of the release journals and the project locks.
    type: path
    default: /var/lib/opsbook
  keep:
    description: Release records kept (at least 5).
    type: int
    default: 10
  lock_timeout:
    description: Seconds to wait for another upgrade, rollback or restore of the project to finish; V(0) fails at once.
    type: float
    default: 0
  health_timeout:
    description: Seconds the new containers may take to become healthy.
    type: float
    default: 300
  readiness_path:
    description: Path requested on each new container's published port, and by the gate's synthetic requests.
    type: str
    default: /health
  gate_requests:
    description: Synthetic requests through Nginx to the new containers before the switch; V(0) skips this layer.
    type: int
    default: 10
  gate_port:
    description: Loopback port of the temporary Nginx server the gate's requests go through.
    type: int
    default: 8099
  canary_weight:
    description: Percent of the traffic the new containers take before the full switch; V(0) switches at once.
    type: int
    default: 0
  canary_s:
    description: Seconds of the canary phase.
    type: float
    default: 30
  bake_s:
    description: Seconds of the bake after the switch.
    type: float
    default: 30
  bake_paths:
    description: Paths probed through the site during the bake; by default O(readiness_path).
    type: list
    elements: str
    default: []
  bake_rate:
    description: Probes per second through the site during the bake (besides the real traffic in the access log).
    type: float
    default: 10
  bake_min_requests:
    description: Requests the new containers must have answered for the bake to pass.
    type: int
    default: 20
  bake_max_error_ratio:
    description: Largest share of 5xx answers (0 to 1) from the new containers during the bake.
    type: float
    default: 0.01
  bake_max_latency_ms:
    description: Largest p95 upstream response time of the new containers during the bake.
    type: float
    default: 1000
  drain_timeout:
    description:
      - Longest wait, in seconds, for what still goes to the old containers after the switch before they are
        stopped. The drain ends as soon as the last request, SSE stream or WebSocket session to them is done
        (no established connection from the host to their published port or their own address, the Nginx
        workers of before the reload exited), so it costs nothing when nothing is in flight.
      - The default leaves a chat answer streamed over SSE time to finish. A stream still open at the timeout is
        counted in the result (C(evidence.drain.<service>.cut)) and warned about; the container's stop grace
        period then lets the application end it cleanly. See docs/drain.md.
    type: float
    default: 300
  nginx_url:
    description: Base URL of the site on this host, for the bake's probes.
    type: str
    default: http://127.0.0.1
  nginx_host_header:
    description: Host header of the bake's probes (for a name-based virtual host).
    type: str
    default: ""
  upstream_dir:
    description: Directory of the Nginx upstream files.
    type: path
    default: /etc/nginx/upstreams.d
  access_log:
    description: Nginx access log in the nginx role's C(main) format (with C(ua=) and C(urt=)).
    type: path
    default: /var/log/nginx/access.log
"""
