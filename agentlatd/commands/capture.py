"""`agentlatd capture --out DIR`: record this host's /proc and /sys files for `--root DIR`.

The files are agentlatd.capture.WHITELIST (glob patterns, never a blind walk
of /sys); symlinks are kept with their relative targets so the tree is
relocatable; unreadable files are listed with their errno in DIR/capture.json.
The counter files are sampled twice, a second apart (DIR/previous-sample/), so
that `plan --root DIR` runs the daemon's tick with rates. Reads only: nothing
on the host is written.
"""

from __future__ import annotations

import argparse
import sys

from agentlatd import jsonout
from agentlatd import policy as policy_mod
from agentlatd.capture import MANIFEST, write_capture
from agentlatd.errors import AgentlatdError
from agentlatd.sysfs.root import Root
from agentlatd.tick import sample_once

HELP = "record this host's relevant /proc and /sys files into a tree --root replays"
EXAMPLES = (
    "agentlatd capture --out /tmp/myhost",
    "agentlatd status --root /tmp/myhost --interval 0",
    "agentlatd plan --root /tmp/myhost",
    "agentlatd capture --root tests/fixtures/machines/server-2s64t --out /tmp/copy",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="new (or empty) directory to write the capture into")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="filesystem root to capture (default: this host)")
    p.add_argument("--name", metavar="ID", help="machine id for the manifest (default: DIR's name)")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")


def run(args: argparse.Namespace) -> int:
    root = Root(args.root)
    if not root.exists("proc/interrupts"):
        raise AgentlatdError(f"{root.base} has no proc/interrupts: nothing to capture.")
    manifest = write_capture(root, args.out, machine=args.name)
    files = manifest["files"]
    links = manifest["symlinks"]
    bad = manifest["unreadable"]
    assert isinstance(files, list) and isinstance(links, dict) and isinstance(bad, dict)
    summary = {
        "out": args.out, "kernel": manifest["kernel"], "files": len(files),
        "symlinks": len(links), "unreadable": len(bad), "manifest": f"{args.out}/{MANIFEST}",
    }
    # replay check: the capture must sample as the daemon's tick on --root DIR would
    snap = sample_once(Root(args.out), policy_mod.default())
    m = snap.machine
    if m is not None:
        summary["replay"] = {"cpus": len(m.topology.cpus), "irqs": len(m.irqs),
                             "devices": len(m.devices), "rates": snap.rates is not None}
    else:
        summary["replay_error"] = "; ".join(snap.errors)
    if args.json:
        print(jsonout.dumps(summary))
        return 0 if "replay_error" not in summary else 1
    print(f"captured {len(files)} files and {len(links)} symlinks into {args.out} "
          f"(kernel {manifest['kernel'] or '?'})")
    if bad:
        print(f"{len(bad)} unreadable, listed in {summary['manifest']}:")
        for path, err in sorted(bad.items())[:10]:
            print(f"  {err:<8} {path}")
        if len(bad) > 10:
            print(f"  ... and {len(bad) - 10} more")
    if "replay" in summary:
        r = summary["replay"]
        assert isinstance(r, dict)
        print(f"replays as: {r['cpus']} CPUs, {r['irqs']} IRQs, {r['devices']} devices "
              f"(agentlatd status --root {args.out})")
    else:
        print(f"the capture does not replay: {summary['replay_error']}", file=sys.stderr)
        return 1
    return 0
