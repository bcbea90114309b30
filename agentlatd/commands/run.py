"""`agentlatd run`: the daemon (agentlatd/daemon.py)."""

from __future__ import annotations

import argparse
import errno
import logging
import sys

from agentlatd import logging_setup, service
from agentlatd import policy as policy_mod
from agentlatd.daemon import Daemon

HELP = "run the daemon: tune each tick and keep registered agents on quiet CPUs"
EXAMPLES = (
    "agentlatd run",
    "agentlatd run --config /etc/agentlatd.toml",
    "agentlatd run --config my.toml --state-dir /tmp/al --socket /tmp/al/agentlatd.sock",
    "agentlatd run --agents-only --log-level debug",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="policy file (default: /etc/agentlatd.toml when it exists, else "
                        "the embedded default policy); SIGHUP reloads it")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="filesystem root holding proc/ and sys/ (default: this host)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="rollback journal and lock (default: policy daemon.state_dir)")
    p.add_argument("--socket", metavar="PATH",
                   help="registration socket (default: policy daemon.socket)")
    p.add_argument("--agents-only", action="store_true",
                   help="serve agents (pinning, exclusive home CPUs, pm_qos) but apply no "
                        "device knobs (IRQs, RPS, coalescing); heat is still measured")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="override policy daemon.log_level")


def run(args: argparse.Namespace) -> int:
    config = policy_mod.resolve_path(args.config)
    pol = policy_mod.load(config) if config is not None else policy_mod.default()
    logging_setup.setup(args.log_level or pol.daemon.log_level)
    logging.getLogger("agentlatd.daemon").info("policy: %s", pol.source)
    try:
        d = Daemon(pol, config_path=config, root=args.root, state_dir=args.state_dir,
                   socket_path=args.socket,
                   tune_devices=not args.agents_only)
        service.attach(d.hooks, d.view)  # sd_notify + metrics
        return d.run()
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            print(f"agentlatd run: {e} (run as root?)", file=sys.stderr)
            return 1
        raise
