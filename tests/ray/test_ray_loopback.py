"""A Ray that uellm starts itself serves this machine only: every port it listens on is bound to
loopback (Ray has no authentication; docs/ray.md)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listening(procs) -> set[tuple[str, int]]:
    found = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def test_a_local_ray_started_by_uellm_listens_on_loopback_only():
    from uellm_cli.ray_backend.driver import RayBackend

    if ray.is_initialized():
        pytest.skip("another test left Ray running in this process")
    with RayBackend(None) as backend:
        assert backend.started_here
        me = psutil.Process()
        ray_procs = [me, *me.children(recursive=True)]
        ports = _listening(ray_procs)
        node_ips = {n["NodeManagerAddress"] for n in ray.nodes()}
    assert not ray.is_initialized()
    assert ports, "Ray's services should be listening"
    assert {ip for ip, _ in ports} <= LOOPBACK, sorted(ports)
    assert node_ips <= LOOPBACK
