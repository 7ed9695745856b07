# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name


class ModuleDocFragment:
    """The component options the backup and restore modules share (module_utils/_backup/argspec.py)."""

    DOCUMENTATION = r"""
options:
  component:
    description: Name of the backup job; its backups are under O(dest)/<component>/ and it labels the metrics.
    type: str
    required: true
  config:
    description:
      - The JSON job file the C(backup) role writes (for example C(/etc/opsbook/backup/<component>.json)). The
        component and every setting (type, container, destination, metrics, retention, encryption) come from it,
        so the module does what the job's cron line does. Mutually exclusive with O(type).
    type: path
  type:
    description: What the component is (what the backup holds). Required unless O(config) is given.
    type: str
    choices: [mariadb, mysql, postgres, redis, prometheus, volume, path]
  container:
    description: The running database container (required unless O(type=volume) or O(type=path)).
    type: str
  volume:
    description: The Docker volume (O(type=volume)).
    type: str
  path:
    description:
      - O(type=path) only. An absolute directory of the managed host, typically one that containers bind-mount
        (Grafana's data under the C(monitoring) role's C(monitoring_data_dir)), which O(type=volume) cannot reach.
      - The host archives it itself (no helper container); the manifest records every entry's type, mode, size
        and sha256, which the drill compares after extracting into a scratch directory. A restore creates it when
        it is missing, extracts beside the live content, stops the containers that bind-mount it, swaps the
        content, gives it its recorded mode and owner and starts them.
    type: path
  api_port:
    description: O(type=prometheus) only. Port of Prometheus's HTTP API in the container (reached on the container's
      address); the snapshot of a backup needs C(--web.enable-admin-api), a restore polls it until ready.
    type: int
    default: 9090
  user:
    description: Database user; defaults to C(root) for MariaDB and C(POSTGRES_USER) or C(postgres) for PostgreSQL.
    type: str
    default: ""
  password:
    description: Database password; defaults to the password in the container's environment.
    type: str
    default: ""
  dest:
    description: Backup root directory.
    type: path
    default: /var/backups/opsbook
  metrics_dir:
    description: node_exporter textfile collector directory; empty writes no metrics.
    type: path
    default: ""
  helper_image:
    description: Image for the never-started helper container that mounts O(volume); defaults to the image of a
      container using the volume.
    type: str
    default: ""
  drill_prefix:
    description: Name prefix of the throwaway drill containers.
    type: str
    default: opsbook-drill-
"""
