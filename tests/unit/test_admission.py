"""api/admission.py in-process: the per-uid budget a policy reload changes (daemon.reload)."""

from __future__ import annotations

import socket

from agentlatd.api.admission import Admission
from agentlatd.api.conn import Conn, Peer


def test_a_reload_changes_the_rate_of_a_uid_already_connected() -> None:
    a, b = socket.socketpair()
    try:
        adm = Admission(max_clients=64, uid_requests_per_s=1.0, uid_request_burst=2,
                        uid_max_inflight=8)
        c = Conn(a, Peer(pid=1, uid=1000, gid=1000), 1)
        adm.opened(c.peer, 0.0)
        assert adm.charge(c, 0.0) is None and adm.charge(c, 0.0) is None  # the burst
        over = adm.charge(c, 0.0)
        assert over is not None and over[0] >= 0.9 and "1/s" in over[1]
        adm.set_limits(1000.0, 2, 8)
        # the bucket keeps its (empty) tokens; 10 ms at the new rate refills it
        assert adm.charge(c, 0.01) is None
        root = Conn(b, Peer(pid=2, uid=0, gid=0), 2)
        adm.opened(root.peer, 0.0)
        assert all(adm.charge(root, 0.0) is None for _ in range(100))  # root: not limited
        adm.closed(c)
        adm.closed(root)
        assert adm.per_uid == {}
    finally:
        a.close()
        b.close()
