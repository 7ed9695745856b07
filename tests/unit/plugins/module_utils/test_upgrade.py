# -*- coding: utf-8 -*-
# Copyright (c) opsbook.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The planning and journal logic of rolling_upgrade/rollback: image references, the compose file edit, the
bake verdict, the access log, the drain count, the release choice and the project lock."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import calendar
import multiprocessing
import time

import pytest
import yaml

from ansible_collections.opsbook.stack.plugins.module_utils._journal import Journal, Release, ServiceImage
from ansible_collections.opsbook.stack.plugins.module_utils._project_lock import ProjectLocked, project_lock
from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import (
    BadRequest,
    ComposeService,
    Settings,
    choose_release,
    content_key,
    established_on_ports,
    judge_bake,
    parse_access_line,
    parse_docker_time,
    plan_service,
    set_service_image,
    split_image,
    target_image,
    upstream_addresses,
)
from ansible_collections.opsbook.stack.plugins.module_utils._upstream import Server, render_hosts

COMPOSE = """\
# Managed by opsbook.stack.compose_app; edit the inventory, not this file.
name: demo
services:
  backend:
    deploy:
      replicas: 2
    environment:
      APP_SHUTDOWN_GRACE: '10'
    healthcheck:
      test:
      - CMD-SHELL
      - curl -fsS http://127.0.0.1:8000/health
    image: registry:5000/demo-backend:1.0
    labels:
      io.opsbook.port: '8000'
  frontend:
    image: "registry:5000/demo-frontend:1.0"  # pinned
  redis:
    volumes:
    - redis-data:/data
"""


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("registry:5000/demo-backend:1.0", ("registry:5000/demo-backend", "1.0")),
        ("registry:5000/demo-backend", ("registry:5000/demo-backend", "latest")),
        ("nginx", ("nginx", "latest")),
        ("reg/app@sha256:abc", ("reg/app", "")),
    ],
)
def test_split_image(ref, expected):
    assert split_image(ref) == expected


def test_target_image_keeps_the_repository_and_refuses_bad_tags():
    assert target_image("registry:5000/demo-backend:1.0", "2.0") == "registry:5000/demo-backend:2.0"
    assert target_image("registry:5000/demo-backend:1.0", "other/repo:3") == "other/repo:3"
    with pytest.raises(ValueError):
        target_image("a:1", "")
    with pytest.raises(ValueError):
        target_image("a:1", "bad tag")


def test_set_service_image_changes_one_line_only():
    after = set_service_image(COMPOSE, "backend", "registry:5000/demo-backend:2.0")
    changed = [(a, b) for a, b in zip(COMPOSE.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [("    image: registry:5000/demo-backend:1.0", "    image: registry:5000/demo-backend:2.0")]
    doc = yaml.safe_load(after)
    assert doc["services"]["backend"]["image"] == "registry:5000/demo-backend:2.0"
    assert doc["services"]["frontend"]["image"] == "registry:5000/demo-frontend:1.0"


def test_set_service_image_keeps_quotes_and_comments():
    after = set_service_image(COMPOSE, "frontend", "registry:5000/demo-frontend:2.0")
    assert '    image: "registry:5000/demo-frontend:2.0"  # pinned\n' in after
    assert yaml.safe_load(after)["services"]["frontend"]["image"] == "registry:5000/demo-frontend:2.0"


def test_set_service_image_refuses_a_service_without_image_line():
    with pytest.raises(ValueError, match="redis"):
        set_service_image(COMPOSE, "redis", "x:1")
    with pytest.raises(ValueError, match="nosuch"):
        set_service_image(COMPOSE, "nosuch", "x:1")


SHAPES = """\
x-base: &base
  image: reg/base:1
services:
  "api":   # the API, with an anchor of its own
    image: reg/api:1  # pinned
  worker: &worker
    <<: *base
    image: reg/worker:1
  cron:
    <<: *worker
  flow: {image: reg/flow:1}
  aliased:
    image: &img reg/aliased:1
"""


def test_set_service_image_on_valid_compose_shapes():
    after = set_service_image(SHAPES, "api", "reg/api:2")
    assert yaml.safe_load(after)["services"]["api"]["image"] == "reg/api:2"
    assert '  "api":   # the API, with an anchor of its own\n    image: reg/api:2  # pinned\n' in after
    # The service's own line wins over the merge; that cron shares it is found by the Compose check (test below).
    after = set_service_image(SHAPES, "worker", "reg/worker:2")
    assert yaml.safe_load(after)["services"]["worker"]["image"] == "reg/worker:2"


@pytest.mark.parametrize(
    "service, says",
    [
        ("cron", "cannot find the `image:` line of service cron"),
        ("flow", "service flow is not a block mapping"),
        ("aliased", "the `image:` of service aliased is not a plain reference"),
    ],
)
def test_set_service_image_names_the_shape_it_cannot_edit(service, says):
    with pytest.raises(ValueError, match=says) as info:
        set_service_image(SHAPES, service, "x:2")
    assert "no flow mapping" in str(info.value)


LOG = (
    '127.0.0.1 - - [22/Nov/2026:16:00:00 +0000] "GET /api/version HTTP/1.1" %s 60 "-" "load" "-" '
    'rt=0.004 urt="%s" ua="%s" rid=abc'
)


def test_parse_access_line_takes_the_last_upstream_try():
    entry = parse_access_line(LOG % (200, "0.003", "127.0.0.1:32770"))
    assert entry["status"] == 200 and entry["upstream"] == "127.0.0.1:32770"
    assert entry["upstream_ms"] == pytest.approx(3.0)
    retried = parse_access_line(LOG % (502, "0.001, 0.002", "127.0.0.1:1, 127.0.0.1:2"))
    assert retried["upstream"] == "127.0.0.1:2" and retried["upstream_ms"] == pytest.approx(2.0)
    assert parse_access_line("garbage") is None
    no_upstream = parse_access_line(LOG % (200, "-", "-"))
    assert no_upstream["upstream_ms"] is None


def samples(ok, bad, ms=5.0):
    return [{"status": 200, "ms": ms}] * ok + [{"status": 500, "ms": ms}] * bad


def test_judge_bake_fails_as_soon_as_the_error_ratio_is_certain():
    verdict = judge_bake(samples(15, 5), 0.01, 1000, 20, final=False)
    assert verdict is not None and not verdict.ok and "5xx ratio 25.0%" in verdict.reason


def test_judge_bake_waits_for_enough_requests_and_for_the_end():
    assert judge_bake(samples(3, 3), 0.01, 1000, 20, final=False) is None  # too few to judge yet
    assert judge_bake(samples(30, 0), 0.01, 1000, 20, final=False) is None  # fine so far, not over
    final = judge_bake(samples(30, 0), 0.01, 1000, 20, final=True)
    assert final.ok and final.requests == 30 and final.errors == 0
    starved = judge_bake(samples(5, 0), 0.01, 1000, 20, final=True)
    assert not starved.ok and "only 5 requests" in starved.reason


def test_judge_bake_checks_the_p95_latency():
    one_slow = samples(19, 0, ms=10.0) + samples(1, 0, ms=5000.0)
    assert judge_bake(one_slow, 0.01, 1000, 20, final=True).ok  # one slow answer in 20 is not the p95
    slower = samples(10, 0, ms=10.0) + samples(10, 0, ms=5000.0)
    verdict = judge_bake(slower, 0.01, 1000, 20, final=False)
    assert not verdict.ok and "p95 latency" in verdict.reason


def test_established_on_ports_counts_only_established_rows(tmp_path):
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:8000 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1\n"  # est
        "   1: 0100007F:8000 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2\n"  # listen
        "   2: 0100007F:D432 0100007F:8000 01 00000000:00000000 00:00000000 00000000     0        0 3\n"  # est
        "   3: 0100007F:D433 0100007F:9000 06 00000000:00000000 00:00000000 00000000     0        0 4\n"
    )  # wait
    assert established_on_ports([0x8000], [str(table)]) == 2
    assert established_on_ports([0x9000], [str(table)]) == 0
    assert established_on_ports([0x8000], [str(tmp_path / "missing")]) == 0


def test_upstream_addresses_reads_the_shared_functions_file():
    content = render_hosts(
        "demo_backend", [Server("172.18.0.4:8000", comment="demo-backend-3"), Server("172.18.0.2:8000")]
    )
    assert upstream_addresses(content) == ["172.18.0.2:8000", "172.18.0.4:8000"]
    assert upstream_addresses(None) == []


def test_parse_docker_time():
    expected = calendar.timegm((2026, 11, 22, 16, 0, 0, 0, 0, 0))
    assert parse_docker_time("2026-11-22T16:00:00.123456789Z") == pytest.approx(expected + 0.123456789)
    assert parse_docker_time("2026-11-22T17:00:00+01:00") == pytest.approx(expected)
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time(None) is None


# --------------------------------------------------------------------------------------------------------
# Planning and the release choice against a host that is described, not run
# --------------------------------------------------------------------------------------------------------


class FakeClient:
    def __init__(self, containers, images):
        self.containers = containers
        self.images = images

    def list_containers(self, labels=None, all=False):  # pylint: disable=redefined-builtin
        return [c for c in self.containers if all or c["State"] == "running"]

    def inspect_image(self, image):
        return self.images[image]


class FakeHost:
    def __init__(self, tmp_path, containers, images):
        self.s = Settings(project="demo", project_dir=str(tmp_path))
        self.client = FakeClient(containers, images)
        self._images = images

    def image(self, ref):
        return self._images.get(ref)

    def registry_digest(self, ref):
        return "remote@" + ref

    def containers(self, service, port=None):
        from ansible_collections.opsbook.stack.plugins.module_utils._upgrade import Container

        return [Container(c["Id"], c["Id"], c["ImageID"], c["State"], 1, 0.0, 30000) for c in self.client.containers]


IMG1 = {"Id": "sha256:one", "RepoDigests": ["reg/app@sha256:d1"]}
IMG2 = {"Id": "sha256:two", "RepoDigests": ["reg/app@sha256:d2"]}


def running(image_id, n=2, ref="reg/app:1"):
    return [
        {
            "Id": "c%d" % i,
            "ImageID": image_id,
            "State": "running",
            "Image": ref,
            "Created": i,
            "Labels": {"com.docker.compose.service": "web"},
        }
        for i in range(n)
    ]


def test_plan_is_none_when_every_replica_runs_the_target(tmp_path):
    host = FakeHost(tmp_path, running("sha256:two", ref="reg/app:2"), {"reg/app:2": IMG2, "sha256:two": IMG2})
    svc = ComposeService("web", "reg/app:2", 2, "web", 8000, True)
    plan = plan_service(host, svc, "reg/app:2", False)
    assert plan.action == "none"


def test_plan_moves_from_digest_to_digest(tmp_path):
    host = FakeHost(tmp_path, running("sha256:one"), {"reg/app:1": IMG1, "sha256:one": IMG1, "reg/app:2": IMG2})
    svc = ComposeService("web", "reg/app:1", 2, "web", 8000, True)
    plan = plan_service(host, svc, "reg/app:2", False).to_dict()
    assert plan["action"] == "rolling"
    assert plan["from"]["digest"] == "reg/app@sha256:d1" and plan["to"]["digest"] == "reg/app@sha256:d2"


def test_plan_in_check_mode_asks_the_registry_for_an_image_not_pulled_yet(tmp_path):
    host = FakeHost(tmp_path, running("sha256:one"), {"reg/app:1": IMG1, "sha256:one": IMG1})
    svc = ComposeService("db", "reg/app:1", 1, "stateful", None, True)
    plan = plan_service(host, svc, "reg/app:9", True).to_dict()
    assert plan["action"] == "recreate" and plan["to"]["digest"] == "remote@reg/app:9"


def rel(n, image_id, status="succeeded"):
    return Release(
        id="r%d" % n,
        project="demo",
        kind="upgrade",
        status=status,
        created="",
        created_ts=1000.0 + n,
        services={"web": ServiceImage("reg/app:%d" % n, image_id, "reg/app@sha256:d%d" % n)},
    )


def test_choose_release_skips_what_runs_failed_ones_and_missing_images(tmp_path):
    journal = Journal(str(tmp_path / "journal"), "demo")
    for release in (
        rel(1, "sha256:one"),
        rel(2, "sha256:gone"),
        rel(3, "sha256:three", "failed"),
        rel(4, "sha256:two"),
    ):
        journal.record(release)
    images = {"sha256:one": IMG1, "sha256:two": IMG2, "sha256:three": {"Id": "sha256:three"}}
    host = FakeHost(tmp_path, running("sha256:two", ref="reg/app:4"), images)
    assert choose_release(host, journal, None).id == "r1"  # r4 runs, r3 failed, r2's image is gone
    assert choose_release(host, journal, "r1").id == "r1"
    with pytest.raises(BadRequest, match="not in"):
        choose_release(host, journal, "r99")
    with pytest.raises(BadRequest, match="status failed"):
        choose_release(host, journal, "r3")
    with pytest.raises(BadRequest, match="not intact"):
        choose_release(host, journal, "r2")


def test_content_key_is_the_digests():
    assert content_key(rel(1, "x").services) == "web=reg/app@sha256:d1"


# --------------------------------------------------------------------------------------------------------
# The project lock (a real flock between two processes)
# --------------------------------------------------------------------------------------------------------


def _hold(root, ready, seconds):
    with project_lock("demo", "rolling_upgrade", root):
        ready.set()
        time.sleep(seconds)


def test_second_run_fails_clearly_then_waits_for_the_lock(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), ready, 1.5))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(ProjectLocked) as info:
            with project_lock("demo", "rollback", str(tmp_path), wait_s=0.3):
                pass
        assert "locked by rolling_upgrade (pid %d" % holder.pid in str(info.value)
        started = time.monotonic()
        with project_lock("demo", "rollback", str(tmp_path), wait_s=10) as held:
            assert held.waited_s > 0.5
        assert time.monotonic() - started < 5
    finally:
        holder.join(10)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), ready, 60))
    holder.start()
    assert ready.wait(10)
    holder.kill()
    holder.join(10)
    with project_lock("demo", "rolling_upgrade", str(tmp_path), wait_s=0) as held:
        assert held.waited_s < 0.5  # no wait for a lock whose holder is gone
