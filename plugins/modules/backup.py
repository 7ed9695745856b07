#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

DOCUMENTATION = r"""
---
module: backup
short_description: Take a checksummed, committed backup of a database container, a Docker volume or a host directory
version_added: 0.1.0
description:
  - Dumps MariaDB/MySQL (C(mariadb-dump) or C(mysqldump) with C(--single-transaction --routines --events --triggers),
    and on MariaDB the users, grants and roles with C(mariadb-dump --system=users) into C(accounts.sql.zst);
    MySQL's C(mysqldump) cannot, which the manifest's C(accounts_skipped) says),
    PostgreSQL (C(pg_dump -Fc) per database plus C(pg_dumpall -g)), Redis (C(BGSAVE), then the RDB file), Prometheus
    (a TSDB snapshot through the admin API, archived and then removed), a named Docker volume (tar through the
    archive API) or a directory of the host such as a bind mount (O(type=path), a tar written on the host, for
    example Grafana's data with Grafana stopped) through Docker exec, streams it through C(zstd) into
    C(<name>.partial), fsyncs and renames it, and writes a manifest with the sha256 and size of every artifact
    last, as the commit marker.
  - A dump whose command exits non-zero, that is empty, too small or cut off fails the task; the partial files
    are removed and older backups are left alone.
  - After the backup is read back and verified, retention removes the backups that neither O(keep_last) nor
    O(keep_daily)/O(keep_weekly) keep, deleting only the files their manifests list, and never the newest
    verified backup.
  - The same code runs from cron (the C(backup) role installs it); both write the same metrics file.
  - Database passwords are read from the container's own environment (C(MARIADB_ROOT_PASSWORD),
    C(POSTGRES_PASSWORD)) unless O(password) is given, and reach the dump tools through the exec environment,
    never their command line.
author:
  - opsbook.stack maintainers (!UNKNOWN)
extends_documentation_fragment:
  - opsbook.stack.attributes
  - opsbook.stack.backup
  - opsbook.stack.docker
attributes:
  action_group:
    support: full
    membership: [opsbook.stack.stack]
  check_mode:
    support: full
    details: Check mode returns the plan (target directory, existing backups, last size, free space) and
      writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run takes a new backup and reports a change.
options:
  databases:
    description: Databases to dump; empty means every database except the system ones.
    type: list
    elements: str
    default: []
  keep_last:
    description: Number of newest backups kept.
    type: int
    default: 7
  keep_daily:
    description: Number of days whose newest backup is kept.
    type: int
    default: 7
  keep_weekly:
    description: Number of ISO weeks whose newest backup is kept.
    type: int
    default: 4
  zstd_level:
    description: zstd compression level.
    type: int
    default: 3
  min_bytes:
    description: Smallest plausible uncompressed dump in bytes; smaller fails. Defaults per type.
    type: int
  stop_owners:
    description: Stop the running containers that use O(volume), or bind-mount O(path) or a directory below it,
      during the archive; by default only those labelled C(opsbook.backup.stop=true) are stopped. With O(type=path),
      V(false) does not ask Docker at all.
    type: bool
  source_counts:
    description: Record the exact row count of every table in the manifest before the dump (MariaDB/MySQL and
      PostgreSQL); the restore drill compares against them. Costs a scan of every table.
    type: bool
    default: true
  source_checksums:
    description: Also record C(CHECKSUM TABLE) of every MariaDB/MySQL table (a second full scan); the drill
      compares against them.
    type: bool
    default: false
  age_recipients:
    description: Encrypt every artifact (after zstd) to these age public keys (C(age1...)); needs C(age) on the
      host. Restores and drills then need an identity file
      (M(opsbook.stack.restore) O(opsbook.stack.restore#module:age_identity)).
    type: list
    elements: str
    default: []
  age_identity:
    description: age identity (private key) file used by the restore drill of an encrypted backup.
    type: path
    default: ""
  drill:
    description: After the backup, restore it into a throwaway container of the same image and check it.
    type: bool
    default: false
notes:
  - Needs the C(zstd) binary on the managed host.
  - Needs the C(age) binary when O(age_recipients) is set.
seealso:
  - module: opsbook.stack.restore
"""

EXAMPLES = r"""
- name: Back up the MariaDB of the stack and prove it restores
  opsbook.stack.backup:
    component: agentchat-mysql
    type: mariadb
    container: agentchat-mysql-1
    metrics_dir: /var/lib/prometheus/node-exporter
    drill: true
  register: bkp

- name: Archive the Grafana volume (Grafana stopped meanwhile, its SQLite file consistent)
  opsbook.stack.backup:
    component: grafana
    type: volume
    volume: monitoring_grafana_data
    stop_owners: true

- name: Archive Grafana's bind-mounted data directory (Grafana stopped meanwhile)
  opsbook.stack.backup:
    component: grafana
    type: path
    path: /var/lib/monitoring/grafana
    stop_owners: true

- name: Back up a job exactly as its cron line does, from the file the backup role wrote
  opsbook.stack.backup:
    component: mysql
    config: /etc/opsbook/backup/mysql.json

# Every run takes a new backup: changed is always true, and bkp.backup.pruned lists what retention removed.
"""

RETURN = r"""
backup:
  description: The backup taken.
  returned: success and not check mode
  type: dict
  sample:
    component: agentchat-mysql
    id: 20261122T043947Z
    path: /var/backups/opsbook/agentchat-mysql/20261122T043947Z
    size: 913
    raw_size: 2228
    duration_s: 0.72
    artifacts: [{name: app.sql.zst, kind: sql, bytes: 913, sha256: 7143..., raw_bytes: 2228, database: app}]
    pruned: []
    kept: [20261122T043947Z]
    metrics_file: /var/lib/prometheus/node-exporter/opsbook_backup_agentchat-mysql.prom
offsite:
  description:
    - The off-host copy after the backup, when the job file (O(config)) names an off-host repository (the backup
      role's C(backup_offsite)); every committed backup without a verified remote copy is copied, oldest first.
    - When the copy fails the task fails with C(failure_class=offsite_failed), naming the target and the cause;
      the backup itself is committed (C(evidence.backup)) and the next run copies it.
  returned: when the job has an off-host repository
  type: dict
  sample: {target: "ssh://opsbook-borg@backup1/./app1", copied: [20261122T043947Z], verified: [20261122T043947Z],
           bytes: 913, pending: 0, duration_s: 2.1}
drill:
  description: The restore drill's report (container, table counts, checksums, duration).
  returned: when O(drill=true)
  type: dict
plan:
  description: What the backup would do.
  returned: check mode
  type: dict
failure_class:
  description: Class of the failure, the same as the command line's exit code says.
  returned: failure
  type: str
  sample: disk_full
exit_code:
  description: The command line's exit code for this failure.
  returned: failure
  type: int
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opsbook.stack.plugins.module_utils._argspec import docker_argument_spec
from ansible_collections.opsbook.stack.plugins.module_utils._backup import (
    EXIT_DOCKER,
    BackupError,
    plan_backup,
    run_backup,
    run_drill,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.argspec import (
    component_argument_spec,
    component_module_rules,
    job_from_params,
)
from ansible_collections.opsbook.stack.plugins.module_utils._backup.offsite import backup_and_copy
from ansible_collections.opsbook.stack.plugins.module_utils._docker import DockerError


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            **component_argument_spec(),
            **docker_argument_spec(),
            databases=dict(type="list", elements="str", default=[]),
            keep_last=dict(type="int", default=7),
            keep_daily=dict(type="int", default=7),
            keep_weekly=dict(type="int", default=4),
            zstd_level=dict(type="int", default=3),
            min_bytes=dict(type="int"),
            stop_owners=dict(type="bool"),
            source_counts=dict(type="bool", default=True),
            source_checksums=dict(type="bool", default=False),
            age_recipients=dict(type="list", elements="str", default=[]),
            age_identity=dict(type="path", default=""),
            drill=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
        **component_module_rules(),
    )
    p = module.params
    try:
        settings, spec = job_from_params(p)
        if module.check_mode:
            module.exit_json(changed=True, plan=plan_backup(spec, settings))
        backup = backup_and_copy(spec, settings) if settings.offsite else run_backup(spec, settings).to_dict()
        result: dict[str, t.Any] = {"changed": True, "backup": backup}
        if "offsite" in backup:
            result["offsite"] = backup.pop("offsite")
        if p["drill"]:
            result["drill"] = run_drill(spec, settings, result["backup"]["id"])
    except BackupError as exc:
        module.fail_json(
            msg=exc.message, failure_class=exc.failure_class, exit_code=exc.exit_code, evidence=exc.evidence
        )
    except (DockerError, OSError) as exc:
        module.fail_json(
            msg="backup of %s failed: %s" % (p["component"], exc), failure_class="docker", exit_code=EXIT_DOCKER
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
