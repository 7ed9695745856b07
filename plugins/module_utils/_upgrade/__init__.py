# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Zero-downtime rolling upgrades and rollbacks of a Compose project behind Nginx.

Private to this collection: not a public API, it may change in any release.

The mechanism (docs/architecture.md, "Contracts"), for each service that changes:

1. The service's ``image:`` in the rendered ``compose.yaml`` is set to the target, so Compose stays the source
   of truth: ``docker compose up -d --no-deps --no-recreate --scale svc=2N svc`` then creates N new containers
   from the new image beside the N old ones, which ``--no-recreate`` leaves running. (An override file or an
   environment variable would leave compose.yaml saying one thing while the containers run another; editing the
   one line keeps ``docker compose config`` truthful, and the edit is checked with ``docker compose config``
   before it replaces the file.)
2. Gate, three layers: Docker health (watched every 0.2 s, honouring the container's start_period; an
   ``unhealthy``, an exit or a restart aborts at once), HTTP readiness on each new container's published port,
   and K synthetic requests through Nginx to the new containers only (a loopback-only gate server).
3. Optional canary: old and new share the upstream by weight for a while.
4. Switch: the upstream lists the new containers only (module_utils/_upstream.py, the one shared function).
5. Bake: probes through the real site plus the Nginx access log lines of the new servers; the 5xx ratio and
   the p95 upstream latency must stay under their limits, and the new containers must stay healthy.
6. Drain the old containers (no established connection to their port, or the drain timeout), stop them with
   their own grace period, remove them: the service is back to N containers, all new.

Failure before the switch removes only the new containers and puts the compose file back; failure in the
canary or the bake switches the upstream back first. Either way the result carries the evidence (health log,
log tail, failing probe) and the journal records the release as failed. Stateful services are recreated
stop-first, with a warning. One lock per project (module_utils/_project_lock.py) serializes runs. Each run writes
its phase to its release record at every step; a run that finds a record left in a working phase (a killed run)
puts the project in order from that phase first (``recover``; docs/state-machine.md).

One mechanism per file:

- ``model``: settings, services, plans, containers, the run, the errors
- ``compose_file``: image references and the checked edit of compose.yaml
- ``compose_cli``: ``docker compose`` (argv, run with the lock's descriptor, ``config``)
- ``docker_facts``: a service's containers and images through the Engine client
- ``traffic``: the service's Nginx upstream and the loopback gate
- ``bake``: the access log and the bake verdict
- ``drain``: old Nginx workers and established connections
- ``host``: the pieces above, wired for one run
- ``rollout``: the replacement of one service, and its undo
- ``plan``: the plan of a service
- ``recover``: putting in order what a killed run left, from its recorded phase
- ``choose``: which release a rollback returns to
- ``execute``: a whole run under the lock, and the two entry points
- ``runner``: the modules' shared options and body
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.bake import (
    AccessLog,
    BakeVerdict,
    judge_bake,
    parse_access_line,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.choose import choose_release, rollback_targets
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_cli import ComposeCli, parse_services
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.compose_file import (
    ComposeFile,
    set_service_image,
    split_image,
    target_image,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.docker_facts import (
    DockerFacts,
    digest_of,
    parse_docker_time,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.drain import (
    drain,
    established_on_ports,
    nginx_workers,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.execute import execute, rollback, rolling_upgrade
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.host import Host
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.model import (
    BadRequest,
    ComposeService,
    Container,
    Run,
    ServicePlan,
    Settings,
    UndoIncomplete,
    UpgradeError,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.plan import content_key, plan_service
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.recover import progress_of, recover, report_surplus
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.rollout import Rollout
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.runner import (
    COMMON_OPTIONS,
    argument_spec,
    run_kind,
    run_module,
    settings_from_params,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade.traffic import Traffic, upstream_addresses

__all__ = [
    "COMMON_OPTIONS",
    "AccessLog",
    "BadRequest",
    "BakeVerdict",
    "ComposeCli",
    "ComposeFile",
    "ComposeService",
    "Container",
    "DockerFacts",
    "Host",
    "Rollout",
    "Run",
    "ServicePlan",
    "Settings",
    "Traffic",
    "UndoIncomplete",
    "UpgradeError",
    "argument_spec",
    "choose_release",
    "content_key",
    "digest_of",
    "drain",
    "established_on_ports",
    "execute",
    "judge_bake",
    "nginx_workers",
    "parse_access_line",
    "parse_docker_time",
    "parse_services",
    "plan_service",
    "progress_of",
    "recover",
    "report_surplus",
    "rollback",
    "rollback_targets",
    "rolling_upgrade",
    "run_kind",
    "run_module",
    "set_service_image",
    "settings_from_params",
    "split_image",
    "target_image",
    "upstream_addresses",
]
