"""Fixtures shared by the upgrade scenario's verifiers (test_default.py, test_real_clients.py)."""

from __future__ import annotations

import re

import pytest


@pytest.fixture(scope="module")
def address(host) -> str:
    """The sandbox host's own address on its default route: where the load clients reach its Nginx."""
    device = host.check_output("ip -4 -o route show default").split(" dev ")[1].split()[0]
    out = host.check_output("ip -4 -o addr show dev %s scope global" % device)
    return re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out).group(1)
