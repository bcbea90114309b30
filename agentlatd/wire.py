"""What both ends of the registration socket agree on, for the daemon's policy and for the
client library alike (docs/protocol.md): the client imports this, never the policy."""

from __future__ import annotations

# the policy's daemon.socket default, and the client's when neither socket= nor
# $AGENTLATD_SOCKET names one (systemd/agentlatd.socket listens here too)
DEFAULT_SOCKET = "/run/agentlatd/agentlatd.sock"

# register's "class" values, from the most latency-sensitive down
LATENCY_CLASSES = ("interactive", "normal", "background")
