"""Who may connect, who may act on whose process, what becomes a path, which
policy files are trusted, which capabilities the daemon keeps.

Other uids are real: forked children that setuid to nobody (65534) or to
65533 (a second unprivileged uid), and target processes started with setpriv.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from agentshelpers import (
    Daemon,
    current_affinity,
    daemon,
    env_for_children,
    policy_text,
    start_daemon,
    thread_affinities,
    wait_until,
    workdir,
)
from hostilehelpers import (
    NOBODY,
    as_uid,
    fd_targets,
    is_error,
    proc_status,
    requests_on,
    scratch_dir,
    spawn_as,
)

from agentlatd import policy
from agentlatd.errors import PolicyError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setuid children)")

OTHER = 65533  # a second unprivileged uid (no passwd entry needed)
DAEMON_GID = 1  # group "daemon" on Debian/Ubuntu


def _policy(group: str = "nogroup", admin: str = "agentlatd-admin") -> str:
    text = policy_text().replace('socket_group = "nogroup"', f'socket_group = "{group}"')
    return text.replace("[daemon]\n", f'[daemon]\nadmin_group = "{admin}"\n', 1)


def _as(uid: int, gid: int, path: str, reqs: list[dict[str, Any]]) -> Any:
    """`reqs` from a child of uid/gid; supplementary group nogroup (the test socket's
    group), so that any uid may connect and the daemon's own checks are what is tested."""
    return as_uid(uid, gid, lambda: requests_on(path, reqs), groups=(NOBODY,))


def _untouched(pid: int) -> bool:
    return set(thread_affinities(pid).values()) == {current_affinity()}


# -- the socket file: mode and group enforced --------------------------------------


def test_socket_mode_and_group_are_enforced() -> None:
    if not _group_exists("daemon"):
        pytest.skip("no group 'daemon'")
    with workdir() as d, daemon(d, _policy(group="daemon")) as dm:
        st = os.lstat(dm.socket)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0 and st.st_gid == DAEMON_GID
        # nobody (not in the group): the kernel refuses the connect (unix(7): write permission)
        res = as_uid(NOBODY, NOBODY, lambda: _try_connect(str(dm.socket)))
        assert res == "PermissionError", res
        # the same uid with the socket's group: admitted
        ans = _as(NOBODY, DAEMON_GID, str(dm.socket), [{"op": "ping"}])
        assert ans[0]["ok"], ans
        assert dm.proc.poll() is None


def _group_exists(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _try_connect(path: str) -> str:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
    except OSError as e:
        return type(e).__name__
    return "connected"


def test_socket_group_that_does_not_exist_leaves_root_only() -> None:
    with workdir() as d, daemon(d, _policy(group="agentlatd-no-such-group")) as dm:
        st = os.lstat(dm.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 0
        assert as_uid(NOBODY, NOBODY, lambda: _try_connect(str(dm.socket))) == "PermissionError"


def test_a_planted_symlink_at_the_socket_path_is_never_followed_or_removed() -> None:
    with workdir() as d:
        canary = d / "canary"
        canary.write_text("precious\n")
        os.symlink(canary, d / "agentlatd.sock")
        (d / "agentlatd.toml").write_text(_policy())
        p = subprocess.run([sys.executable, "-m", "agentlatd", "run", "--config",
                            str(d / "agentlatd.toml"), "--state-dir", str(d / "state"),
                            "--socket", str(d / "agentlatd.sock")], capture_output=True,
                           text=True, timeout=60, env=env_for_children(), check=False)
        assert p.returncode == 1, p.stdout + p.stderr
        assert "is not a socket" in p.stderr and "Traceback" not in p.stderr
        assert (d / "agentlatd.sock").is_symlink() and canary.read_text() == "precious\n"


# -- a non-root peer and another uid's process ----------------------------------------


def test_non_root_peer_cannot_pin_reclassify_or_unregister_another_uids_process() -> None:
    with workdir() as d, daemon(d, _policy()) as dm:
        victim = spawn_as(OTHER, ["sleep", "60"])
        stranger = spawn_as(OTHER, ["sleep", "60"])
        mixed = subprocess.Popen(["setpriv", f"--ruid={NOBODY}", f"--euid={OTHER}",
                                  f"--regid={NOBODY}", "--clear-groups", "sleep", "60"])
        try:
            for p in (victim, stranger, mixed):
                wait_until(lambda p=p: proc_status(p.pid)["Uid"].split()[1] != "0", 5,
                           what="setpriv done")
            # root registers the victim as an interactive agent (pinned to CPU 1)
            assert dm.request("register", agent_id="victim", pid=victim.pid)["ok"]
            pinned = thread_affinities(victim.pid)
            ans = _as(NOBODY, NOBODY, str(dm.socket), [
                {"op": "register", "agent_id": "grab", "pid": stranger.pid},  # pin
                {"op": "register", "agent_id": "victim", "pid": victim.pid,
                 "latency_class": "background"},  # reclassify
                {"op": "register", "agent_id": "victim", "pid": victim.pid},  # re-register
                {"op": "step", "pid": victim.pid, "count": 1, "samples_ns": [1]},
                {"op": "unregister", "pid": victim.pid},  # unregister
                {"op": "unregister", "agent_id": "victim", "pid": victim.pid},
                {"op": "register", "agent_id": "mixed", "pid": mixed.pid},  # ruid ours, euid not
                {"op": "register", "agent_id": "init", "pid": 1},
            ])
            codes = [a["error"]["code"] if not a["ok"] else "ok" for a in ans]
            assert codes == ["not_permitted"] * 8, ans
            assert all(is_error(a) for a in ans)
            assert f"uid {NOBODY}" in ans[0]["error"]["message"]
            rows = {r["agent_id"]: r for r in dm.agents()}
            assert list(rows) == ["victim"]
            assert rows["victim"]["latency_class"] == "interactive"
            assert rows["victim"]["steps"] == 0
            assert thread_affinities(victim.pid) == pinned
            assert _untouched(stranger.pid) and _untouched(mixed.pid) and _untouched(1)
            # another unprivileged uid is no better placed than nobody
            ans = _as(OTHER + 1, OTHER + 1, str(dm.socket),
                      [{"op": "unregister", "pid": victim.pid}])
            assert is_error(ans[0], "not_permitted")
            # while its owner may act on it
            ans = _as(OTHER, OTHER, str(dm.socket), [
                {"op": "step", "pid": victim.pid, "count": 1, "samples_ns": [1]},
                {"op": "unregister", "pid": victim.pid}])
            assert [a["ok"] for a in ans] == [True, True], ans
            assert _untouched(victim.pid)
        finally:
            for p in (victim, stranger, mixed):
                p.kill()
                p.wait()


def test_a_member_of_the_admin_group_may_act_on_any_process() -> None:
    if not _group_exists("daemon"):
        pytest.skip("no group 'daemon'")
    with workdir() as d, daemon(d, _policy(admin="daemon")) as dm:
        target = spawn_as(OTHER, ["sleep", "60"])
        try:
            wait_until(lambda: proc_status(target.pid)["Uid"].split()[1] != "0", 5)
            ans = _as(NOBODY, DAEMON_GID, str(dm.socket), [
                {"op": "register", "agent_id": "t", "pid": target.pid},
                {"op": "unregister", "pid": target.pid}])
            assert [a["ok"] for a in ans] == [True, True], ans
            ans = _as(NOBODY, NOBODY, str(dm.socket), [
                {"op": "register", "agent_id": "t", "pid": target.pid}])
            assert is_error(ans[0], "not_permitted")
        finally:
            target.kill()
            target.wait()


def test_identity_is_the_kernels_not_therequests_on() -> None:
    """A pid field naming the peer's parent, or the peer claiming root's pid as its own,
    changes nothing: SO_PEERCRED decides."""
    with workdir() as d, daemon(d, _policy()) as dm:
        ans = _as(NOBODY, NOBODY, str(dm.socket), [
            {"op": "register", "agent_id": "me", "pid": os.getpid()},
            {"op": "register", "agent_id": "me", "uid": 0, "pid": os.getpid()},
            {"op": "register", "agent_id": "me", "peer": {"uid": 0}, "pid": os.getpid()}])
        assert [a["error"]["code"] for a in ans] == ["not_permitted"] * 3, ans
        assert _untouched(os.getpid())


# -- nothing client-supplied becomes a path -----------------------------------------


def test_agent_ids_and_device_names_stay_strings() -> None:
    with workdir() as d, daemon(d, _policy()) as dm:
        tag = f"agentlatd-canary-{os.getpid()}"
        hostile = [f"../../../../tmp/{tag}", f"/tmp/{tag}", "../../etc/passwd",
                   f"{tag}/../../x", "%s%s%n", "{0.__class__}", "$(touch /tmp/" + tag + ")"]
        child = subprocess.Popen(["sleep", "60"])
        try:
            before = sorted(os.listdir(d))
            for aid in hostile:
                ans = dm.request("register", agent_id=aid, pid=child.pid,
                                 devices=["../../../etc/shadow", aid[:64]])
                assert ans["ok"], ans
                assert ans["result"]["agent_id"] == aid
                rows = dm.agents()
                assert [r["agent_id"] for r in rows] == [aid]
            st = dm.status()
            assert st["agents"] == 1
            # no file appeared anywhere these strings could have led
            for p in (f"/tmp/{tag}", str(d / tag), str(d / "state" / tag), f"/{tag}", "/x"):
                assert not os.path.lexists(p), p
            assert sorted(os.listdir(d)) == before
            assert set(os.listdir(d / "state")) <= {"lock", "journal.json", "journal.json.log"}
            assert not [t for t in fd_targets(dm.proc.pid) if tag in t or "shadow" in t]
            # the CLI prints them as data
            p = subprocess.run([sys.executable, "-m", "agentlatd", "agents", "--json"],
                               capture_output=True, text=True, timeout=30, check=False,
                               env={**env_for_children(), "AGENTLATD_SOCKET": str(dm.socket)})
            assert p.returncode == 0, p.stderr
            assert [r["agent_id"] for r in json.loads(p.stdout)["agents"]] == [hostile[-1]]
        finally:
            child.kill()
            child.wait()


@pytest.fixture(scope="module")
def agent_id_daemon() -> Iterator[Daemon]:
    """One daemon for every agent-id case below: each is refused, so no state carries over
    (checked: no agent after each), and a daemon per case only added a start each."""
    with workdir() as d, daemon(d, _policy()) as dm:
        yield dm


@pytest.mark.parametrize("aid", ["a\x1b[2Jb", "a\nb", "a\x00b", "a\u202eb", "", "x" * 129])
def test_agent_ids_that_would_reach_a_terminal_raw_are_refused(agent_id_daemon: Daemon,
                                                               aid: str) -> None:
    dm = agent_id_daemon
    assert dm.agents() == []
    ans = dm.request("register", agent_id=aid)
    assert is_error(ans, "bad_request"), ans
    assert dm.agents() == []
    assert dm.proc.poll() is None, dm.log[-2000:]


# -- policy files others could write are refused when running as root ------------------


def _policy_file(d: pathlib.Path, mode: int, uid: int = 0) -> pathlib.Path:
    p = d / "agentlatd.toml"
    p.write_text(_policy())
    os.chown(p, uid, 0)
    os.chmod(p, mode)
    return p


@pytest.mark.parametrize("mode,uid,what", [
    (0o664, 0, "group-writable"),
    (0o646, 0, "world-writable"),
    (0o666, 0, "group-writable and world-writable"),
    (0o644, NOBODY, f"owned by uid {NOBODY}, not root"),
    (0o600, OTHER, f"owned by uid {OTHER}, not root"),
    (0o620, NOBODY, f"owned by uid {NOBODY}, not root and group-writable"),
])
def test_insecure_policy_file_is_refused_as_root(tmp_path: pathlib.Path, mode: int, uid: int,
                                                 what: str) -> None:
    p = _policy_file(tmp_path, mode, uid)
    with pytest.raises(PolicyError) as ei:
        policy.load(str(p))
    msg = str(ei.value)
    assert msg.startswith(str(p)) and what in msg and "chmod go-w" in msg, msg
    with pytest.raises(PolicyError):
        policy.check_policy_file_security(str(p))
    # through a symlink: the file itself is judged
    link = tmp_path / "link.toml"
    link.symlink_to(p)
    with pytest.raises(PolicyError):
        policy.load(str(link))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o400])
def test_secure_policy_file_loads(tmp_path: pathlib.Path, mode: int) -> None:
    p = _policy_file(tmp_path, mode)
    assert policy.load(str(p)).source == str(p)
    policy.check_policy_file_security(str(p))
    assert policy.default().source == "<embedded default>"  # the embedded default is exempt


def test_policy_file_check_applies_only_when_running_as_root() -> None:
    with scratch_dir() as d:
        p = _policy_file(d, 0o666, NOBODY)
        res = as_uid(NOBODY, NOBODY, lambda: policy.load(str(p)).source)
        assert res == str(p)


def test_daemon_refuses_to_start_with_an_insecure_policy(tmp_path: pathlib.Path) -> None:
    p = _policy_file(tmp_path, 0o666)
    r = subprocess.run([sys.executable, "-m", "agentlatd", "run", "--config", str(p),
                        "--state-dir", str(tmp_path / "state"), "--socket",
                        str(tmp_path / "s.sock")], capture_output=True, text=True, timeout=60,
                       env=env_for_children(), check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "world-writable" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s.sock").exists() and not (tmp_path / "state").exists()


def test_sighup_reload_refuses_an_insecure_policy_and_keeps_serving() -> None:
    with workdir() as d:
        dm = start_daemon(d, _policy())
        try:
            os.chmod(dm.config, 0o666)
            dm.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "reload refused" in dm.log, 5, what="reload refused")
            line = dm.log.split("reload refused")[1].splitlines()[0]
            assert "world-writable" in line, line
            assert dm.request("ping")["ok"]
            os.chmod(dm.config, 0o644)
            dm.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "policy reloaded" in dm.log, 5, what="reload accepted")
        finally:
            dm.stop()


# -- capabilities --------------------------------------------------------------------

# include/uapi/linux/capability.h
CAPS = {0: "chown", 1: "dac_override", 2: "dac_read_search", 3: "fowner", 4: "fsetid",
        5: "kill", 6: "setgid", 7: "setuid", 8: "setpcap", 9: "linux_immutable",
        10: "net_bind_service", 11: "net_broadcast", 12: "net_admin", 13: "net_raw",
        14: "ipc_lock", 15: "ipc_owner", 16: "sys_module", 17: "sys_rawio", 18: "sys_chroot",
        19: "sys_ptrace", 20: "sys_pacct", 21: "sys_admin", 22: "sys_boot", 23: "sys_nice",
        24: "sys_resource", 25: "sys_time", 26: "sys_tty_config", 27: "mknod", 28: "lease",
        29: "audit_write", 30: "audit_control", 31: "setfcap", 32: "mac_override",
        33: "mac_admin", 34: "syslog", 35: "wake_alarm", 36: "block_suspend",
        37: "audit_read", 38: "perfmon", 39: "bpf", 40: "checkpoint_restore"}
# what the running daemon needs (systemd/agentlatd.service documents each)
NEEDED = {"net_admin", "sys_nice", "sys_ptrace"}


def _caps(mask_hex: str) -> set[str]:
    m = int(mask_hex, 16)
    return {CAPS.get(i, f"cap{i}") for i in range(64) if m >> i & 1}


def test_the_service_unit_bounds_capabilities_to_what_is_needed() -> None:
    unit = (pathlib.Path(__file__).resolve().parents[2] / "systemd" / "agentlatd.service")
    lines = unit.read_text().splitlines()
    bound = [ln.split("=", 1)[1].split() for ln in lines if ln.startswith("CapabilityBoundingSet=")]
    assert bound and {c.lower().removeprefix("cap_") for c in bound[-1]} == NEEDED
    assert "NoNewPrivileges=yes" in lines and "AmbientCapabilities=" in lines


def test_the_daemon_works_with_only_the_units_capabilities() -> None:
    """Started as the unit starts it (bounding set = NEEDED): it serves, pins another
    uid's process and restores it; CapEff is exactly NEEDED."""
    with workdir() as d:
        (d / "agentlatd.toml").write_text(_policy())
        argv = ["setpriv", "--bounding-set=-all," + ",".join(f"+{c}" for c in sorted(NEEDED)),
                "--inh-caps=-all", sys.executable, "-m", "agentlatd", "run", "--config",
                str(d / "agentlatd.toml"), "--state-dir", str(d / "state"), "--socket",
                str(d / "agentlatd.sock")]
        logf = open(d / "daemon.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                env=env_for_children(), cwd=str(d))
        target = spawn_as(OTHER, ["sleep", "60"])
        try:
            wait_until(lambda: (d / "agentlatd.sock").exists() and _ping(d), 30,
                       what="daemon up:\n" + (d / "daemon.log").read_text(errors="replace"))
            pid = _daemon_pid(proc.pid)
            assert _caps(proc_status(pid)["CapEff"]) == NEEDED
            ans = requests_on(str(d / "agentlatd.sock"),
                            [{"op": "register", "agent_id": "t", "pid": target.pid}])
            assert ans[0]["ok"] and ans[0]["result"]["state"] == "placed", ans
            assert set(thread_affinities(target.pid).values()) == {"1"}
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
            logf.close()
            ok = _untouched(target.pid)
            target.kill()
            target.wait()
        assert rc == 0, (d / "daemon.log").read_text(errors="replace")
        assert ok  # restored at stop, with only CAP_SYS_NICE to do it


def _ping(d: pathlib.Path) -> bool:
    try:
        return bool(requests_on(str(d / "agentlatd.sock"), [{"op": "ping"}])[0]["ok"])
    except OSError:
        return False


def _daemon_pid(pid: int) -> int:
    """setpriv execs, so the pid is the daemon's."""
    return pid


def _task_status(pid: int, tid: str) -> dict[str, str]:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return {k: v.strip() for k, _, v in (ln.partition(":") for ln in f)}


def test_a_directly_started_daemon_keeps_only_the_capabilities_it_needs() -> None:
    """Regression: started as root outside systemd it kept the full set (CapEff
    000001ffffffffff). agentlatd/caps.py drops the rest once the socket is bound:
    every thread's effective, permitted and bounding sets are NEEDED, nothing is
    inheritable or ambient, and it still pins another uid's process and restores
    it at stop (CAP_SYS_NICE kept)."""
    target = spawn_as(OTHER, ["sleep", "60"])
    try:
        with workdir() as d, daemon(d, _policy()) as dm:
            tids = os.listdir(f"/proc/{dm.proc.pid}/task")
            assert len(tids) >= 2  # the main loop and the tuner thread at least
            for tid in tids:
                st = _task_status(dm.proc.pid, tid)
                assert _caps(st["CapEff"]) == NEEDED, (tid, sorted(_caps(st["CapEff"])))
                assert _caps(st["CapPrm"]) == NEEDED, tid
                assert _caps(st["CapBnd"]) == NEEDED, tid
                assert _caps(st["CapInh"]) == set() and _caps(st["CapAmb"]) == set(), tid
            assert proc_status(dm.proc.pid)["Uid"].split()[:2] == ["0", "0"]
            ans = requests_on(str(dm.socket),
                            [{"op": "register", "agent_id": "t", "pid": target.pid}])
            assert ans[0]["ok"] and ans[0]["result"]["state"] == "placed", ans
            assert set(thread_affinities(target.pid).values()) == {"1"}
            dm.proc.send_signal(signal.SIGTERM)
            assert dm.proc.wait(30) == 0, dm.log
        assert _untouched(target.pid)
    finally:
        target.kill()
        target.wait()
