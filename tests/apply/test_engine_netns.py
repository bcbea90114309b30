"""apply + rollback against the real kernel, in network namespaces the tests make.

Each test creates its own namespace (alt-<random>) holding a veth pair, and
runs `ip netns exec NS python -m agentlatd ...` there: sysfs inside shows only
that namespace's devices, and the journal records the namespace, so nothing
here can reach this machine's own devices. Every value under
sys/class/net/<veth>/ (queues/ included) is compared byte for byte.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
from applyhelpers import (
    cli,
    napi_set_fields,
    napi_values,
    netns_with_veths,
    plan_file,
    snapshot,
    snapshot_diff,
    veth_changes,
)

from agentlatd.plan.changes import Change

pytestmark = pytest.mark.netns


def test_apply_then_rollback_restores_every_sysfs_value(tmp_path: pathlib.Path) -> None:
    napi = napi_set_fields()
    with netns_with_veths() as v:
        a, b = v.devs
        changes = veth_changes(a, b, napi)
        plan = plan_file(tmp_path / "plan.json", changes)
        state = str(tmp_path / "state")
        before = snapshot(v.netns, v.devs)
        napi_before = napi_values(v.netns, b) if napi else []

        p = cli(["apply", "--plan", str(plan), "--state-dir", state, "--json"], netns=v.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        rep = json.loads(p.stdout)
        status = {(r["knob"], r["target"]): r["status"] for r in rep["results"]}
        assert status.pop(("net.coalesce", a)) == "unsupported"  # veth: no ->get_coalesce
        assert set(status.values()) == {"changed"}, rep
        co = next(r for r in rep["results"] if r["knob"] == "net.coalesce")
        assert co["errclass"] == "unsupported" and "coalesce" in co["message"]

        during = snapshot(v.netns, v.devs)
        changed = {ln.split(":")[0] for ln in snapshot_diff(before, during)}
        want = {f"{d}/queues/{f}" for d in (a, b)
                for f in ("rx-0/rps_cpus", "rx-0/rps_flow_cnt", "tx-0/xps_cpus")}
        want |= {f"{a}/{f}" for f in ("threaded", "napi_defer_hard_irqs", "gro_flush_timeout")}
        assert changed == want, snapshot_diff(before, during)
        if napi:
            (n,) = napi_values(v.netns, b)
            assert n["defer_hard_irqs"] == 3 and n["gro_flush_timeout"] == 50000
            if "irq_suspend_timeout" in napi:
                assert n["irq_suspend_timeout"] == 1000
            if "threaded" in napi:
                assert n["threaded"] is True

        p = cli(["rollback", "--state-dir", state], netns=v.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "removed: every original is back" in p.stdout
        after = snapshot(v.netns, v.devs)
        assert snapshot_diff(before, after) == []
        if napi:
            assert napi_values(v.netns, b) == napi_before


def test_rollback_refuses_another_network_namespace(tmp_path: pathlib.Path) -> None:
    with netns_with_veths() as v1, netns_with_veths() as v2:
        a, b = v1.devs
        plan = plan_file(tmp_path / "plan.json", veth_changes(a, b, frozenset())[:1])
        state = str(tmp_path / "state")
        p = cli(["apply", "--plan", str(plan), "--state-dir", state], netns=v1.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        p = cli(["rollback", "--state-dir", state], netns=v2.netns)
        assert p.returncode == 1
        assert "network namespace" in p.stderr and "ip netns exec" in p.stderr
        p = cli(["rollback", "--state-dir", state], netns=v1.netns)
        assert p.returncode == 0, p.stdout + p.stderr


def test_planner_policy_apply_and_rollback(tmp_path: pathlib.Path) -> None:
    """`agentlatd apply --config` with the real planner, limited to the test's veths."""
    with netns_with_veths() as v:
        pol = tmp_path / "policy.toml"
        pol.write_text(
            "[devices]\n"
            f"include = {json.dumps(list(v.devs))}\n"
            "[tuning]\n"
            "irq_affinity = false\n"
            "rps = true\n"
            "rps_flow_cnt = 4096\n"
            "rps_sock_flow_entries = 0\n"  # global sysctl: never on the host
            "xps = true\n"
            "coalesce = true\n"
            "threaded_napi = true\n"
            "napi_defer_hard_irqs = 2\n"
            "gro_flush_timeout = 20000\n")
        state = str(tmp_path / "state")
        before = snapshot(v.netns, v.devs)
        p = cli(["apply", "--config", str(pol), "--state-dir", state, "--json"], netns=v.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        rep = json.loads(p.stdout)
        assert rep["summary"].get("changed", 0) > 0, rep
        for r in rep["results"]:
            assert r["knob"] != "sysctl"
            if r["knob"] == "task.affinity":
                # threaded NAPI's kthreads, pinned in apply's follow-up pass: they must be
                # the test veths' own ("napi/<dev>-<id>", comm cut at 15 characters)
                pid = r["target"].split(":")[0]
                comm = pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
                assert any(f"napi/{d}-"[:15] == comm[:len(f"napi/{d}-")][:15] for d in v.devs), (r, comm)
                continue
            assert r["target"].split("/")[0] in v.devs, r  # nothing outside the test's devices
        assert snapshot_diff(before, snapshot(v.netns, v.devs)) != []
        p = cli(["rollback", "--state-dir", state], netns=v.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        assert snapshot_diff(before, snapshot(v.netns, v.devs)) == []


def test_rollback_print_of_knobs_in_a_network_namespace_prints_bare_sys_paths(
        tmp_path: pathlib.Path) -> None:
    """The printed lines, pasted on the host, restore the namespace's veths."""
    with netns_with_veths() as v:
        a, b = v.devs
        changes = [c for c in veth_changes(a, b, frozenset()) if c.knob != "net.coalesce"]
        plan = plan_file(tmp_path / "plan.json", changes)
        state = str(tmp_path / "state")
        before = snapshot(v.netns, v.devs)
        p = cli(["apply", "--plan", str(plan), "--state-dir", state], netns=v.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        assert snapshot_diff(before, snapshot(v.netns, v.devs)) != []
        p = cli(["rollback", "--print", "--state-dir", state])  # from the host's namespace
        assert p.returncode == 0, p.stderr
        lines = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]
        assert lines and all(ln.startswith(f"ip netns exec {v.netns} sh -c '") for ln in lines), lines
        r = subprocess.run(["sh", "-e"], input=p.stdout, capture_output=True, text=True,
                           timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        assert snapshot_diff(before, snapshot(v.netns, v.devs)) == []
        # and from inside the namespace, the lines stay plain
        p = cli(["rollback", "--print", "--state-dir", state], netns=v.netns)
        assert not any(ln.startswith("ip netns") for ln in p.stdout.splitlines()), p.stdout
        cli(["rollback", "--state-dir", state], netns=v.netns)


def test_dry_run_says_would_change_for_a_knob_the_kernel_reports_unsupported(
        tmp_path: pathlib.Path) -> None:
    """Threaded NAPI on a veth without NAPI instances (no GRO, no XDP): the kernel's
    EOPNOTSUPP is knowable from netdev napi-get, so --dry-run says so; with GRO on the
    same veth has NAPIs and the dry run plans the write."""
    for gro, want in ((False, "unsupported"), (True, "planned")):
        with netns_with_veths(gro=gro) as v:
            a, _b = v.devs
            plan = plan_file(tmp_path / "plan.json", [Change.parse("net.threaded", a, "", "1", "t")])
            state = str(tmp_path / f"state-{gro}")
            p = cli(["apply", "--dry-run", "--plan", str(plan), "--state-dir", state, "--json"],
                    netns=v.netns)
            (r,) = json.loads(p.stdout)["results"]
            assert r["status"] == want, r
            # and the kernel agrees: the real write fails exactly when the dry run said so
            p = cli(["apply", "--plan", str(plan), "--state-dir", state, "--json"], netns=v.netns)
            (r,) = json.loads(p.stdout)["results"]
            assert r["status"] == ("unsupported" if not gro else "changed"), r
            cli(["rollback", "--state-dir", state], netns=v.netns)
