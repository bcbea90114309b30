"""Trust at start: what the root daemon takes from disk, and what a failed start leaves.

- A start that fails (socket taken, bad socket path, unusable state directory,
  metrics address that cannot be bound, bad policy) changes nothing: device
  knobs of a veth in a test netns byte for byte, no journal, one line naming
  the path, no traceback.
- The state directory, the socket's directory and the journal are trusted
  only when nobody but root could have written them (agentlatd/safepath.py,
  apply/journal.py check_file and checksums); the socket is never reachable
  before its mode and group are set.
- A journal naming a network namespace that was deleted does not block
  rollback or the next start: its device entries are reported and dropped,
  its task entries restored.

Everything touches only what it creates: a netns with a veth pair (RPS/XPS
of those veths only), temp directories, child `sleep` processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator

import pytest
from agentshelpers import env_for_children, needs_2cpus, policy_text, request, wait_until
from applyhelpers import REPO, Veths, netns_with_veths, snapshot, snapshot_diff

import agentlatd.knobset  # noqa: F401 - every knob registered, as the entry points do
from agentlatd.api.server import SocketError, bind_socket
from agentlatd.apply import journal, journal_read
from agentlatd.apply.engine import Engine
from agentlatd.apply.journal import JournalUntrusted
from agentlatd.errors import JournalError
from agentlatd.sysfs.root import Root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NOBODY = 65534


def _steering_policy(include: str, extra: str = "", daemon_extra: str = "") -> str:
    """RPS/XPS of the test's veths only: no IRQ, no sysctl, no host task."""
    text = policy_text(interval=0.2, extra=extra)
    text = text.replace('include = ["agentlatd-test-none-*"]', f'include = ["{include}"]')
    text = text.replace("[daemon]\n", f"[daemon]\n{daemon_extra}")
    return text.replace("rps = false", "rps = true").replace("xps = false", "xps = true")


def _run_in(ns: str, args: list[str], cwd: pathlib.Path,
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "agentlatd", *args],
                          capture_output=True, text=True, env=env_for_children(), cwd=str(cwd),
                          timeout=timeout, check=False)


def _port_holder(ns: str) -> subprocess.Popen[str]:
    """A process in `ns` listening on a TCP port of 127.0.0.1; it prints the port."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c",
         "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n"
         "print(s.getsockname()[1], flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def veths() -> Iterator[Veths]:
    with netns_with_veths(1) as v:
        yield v


# -- a failed start leaves the host untouched --------------------------------------------


FAILED_STARTS = ["socket_already_served", "socket_path_with_nul", "socket_path_over_108_bytes",
                 "socket_in_proc", "state_dir_is_a_file", "state_dir_is_a_symlink",
                 "journal_agentlatd_did_not_write", "metrics_listen_unbindable", "policy_bad"]


@pytest.mark.netns
@pytest.mark.parametrize("case", FAILED_STARTS)
def test_failed_start_leaves_the_host_untouched(veths: Veths, tmp_path: pathlib.Path,
                                                case: str) -> None:
    tag = veths.devs[0][3:]
    include = f"v?0{tag}"
    state = tmp_path / "state"
    sock = tmp_path / "agentlatd.sock"
    config = tmp_path / "agentlatd.toml"
    daemon_extra = ""
    extra = ""
    sock_arg: list[str] = ["--socket", str(sock)]
    state_arg = str(state)
    names = str(sock)  # what the error line must name
    held: socket.socket | None = None
    holder: subprocess.Popen[str] | None = None
    if case == "socket_already_served":
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.bind(str(sock))
        held.listen(8)
    elif case == "socket_path_with_nul":
        sock_arg = []
        daemon_extra = f'socket = "{tmp_path}/a\\u0000b.sock"\n'
        names = str(tmp_path)
    elif case == "socket_path_over_108_bytes":
        long = tmp_path / ("s" * 110 + ".sock")
        sock_arg = ["--socket", str(long)]
        names = str(long)
    elif case == "socket_in_proc":
        sock_arg = ["--socket", "/proc/x.sock"]
        names = "/proc/x.sock"
    elif case == "state_dir_is_a_file":
        (tmp_path / "file").write_text("not a directory\n")
        state_arg = str(tmp_path / "file")
        state = tmp_path / "file"
        names = state_arg
    elif case == "state_dir_is_a_symlink":
        (tmp_path / "real").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "real")
        state_arg = str(tmp_path / "link")
        state = tmp_path / "real"
        names = state_arg
    elif case == "journal_agentlatd_did_not_write":
        state.mkdir()
        (state / "journal.json").write_text(json.dumps({
            "version": 1, "complete": True, "root": "/", "entries": [
                {"knob": "net.rps_cpus", "target": f"{veths.devs[0]}/rx-0", "original": "1",
                 "written": None, "flags": []}]}))
        names = str(state / "journal.json")
    elif case == "metrics_listen_unbindable":
        holder = _port_holder(veths.netns)
        port = int(holder.stdout.readline()) if holder.stdout else 0
        extra = f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        names = f"127.0.0.1:{port}"
    elif case == "policy_bad":
        daemon_extra = 'max_clients = "many"\n'
        names = str(config)
    config.write_text(_steering_policy(include, extra, daemon_extra))
    before = snapshot(veths.netns, veths.devs)
    try:
        p = _run_in(veths.netns, ["run", "--config", str(config), "--state-dir", state_arg,
                                  *sock_arg], tmp_path)
    finally:
        if held is not None:
            held.close()
        if holder is not None:
            holder.kill()
            holder.wait()
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("agentlatd run:")]
    assert len(errors) == 1 and names in errors[0], out
    assert snapshot_diff(before, snapshot(veths.netns, veths.devs)) == [], out
    if case == "journal_agentlatd_did_not_write":
        assert (state / "journal.json").exists(), out  # refused, left for a person
    elif state.is_dir():
        assert not (state / "journal.json").exists(), out
    if case == "state_dir_is_a_symlink":
        assert os.listdir(state) == [], out  # nothing written through the link
    if case == "socket_already_served":
        assert sock.exists()  # the other server's socket is left alone
    else:
        assert not sock.exists(), out


@pytest.mark.netns
def test_a_start_that_fails_after_acquiring_removes_its_socket(veths: Veths,
                                                              tmp_path: pathlib.Path) -> None:
    """The socket is bound before the metrics listener: its file must not stay behind."""
    config = tmp_path / "agentlatd.toml"
    holder = _port_holder(veths.netns)
    try:
        port = int(holder.stdout.readline()) if holder.stdout else 0
        config.write_text(_steering_policy("agentlatd-test-none-*",
                                           f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'))
        sock = tmp_path / "agentlatd.sock"
        p = _run_in(veths.netns, ["run", "--config", str(config), "--state-dir",
                                  str(tmp_path / "state"), "--socket", str(sock)], tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode != 0 and not sock.exists(), p.stderr
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".agentlatd-bind-")]


# -- the state directory ------------------------------------------------------------------


def _chown(path: pathlib.Path, uid: int) -> None:
    os.chown(path, uid, uid)


STATE_DIRS = ["symlink", "owned_by_nobody", "group_writable", "world_writable_sticky",
              "parent_owned_by_nobody", "parent_symlink_owned_by_nobody"]


@pytest.mark.parametrize("case", STATE_DIRS)
def test_untrusted_state_dir_is_refused_before_anything_is_written(tmp_path: pathlib.Path,
                                                                   case: str) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    state = tmp_path / "state"
    if case == "symlink":
        state.symlink_to(real)
    elif case == "owned_by_nobody":
        state.mkdir()
        _chown(state, NOBODY)
    elif case == "group_writable":
        state.mkdir()
        os.chmod(state, 0o775)
    elif case == "world_writable_sticky":
        state.mkdir()
        os.chmod(state, 0o1777)
    elif case == "parent_owned_by_nobody":
        parent = tmp_path / "p"
        parent.mkdir()
        _chown(parent, NOBODY)
        state = parent / "state"
        state.mkdir()
    elif case == "parent_symlink_owned_by_nobody":
        link = tmp_path / "link"
        link.symlink_to(real)
        os.lchown(link, NOBODY, NOBODY)
        state = link / "state"
    with Engine(Root("/"), str(state)) as eng, pytest.raises(JournalError) as ei:
        eng.acquire()
    assert "cannot use state directory" in str(ei.value), ei.value
    # nothing created through the link or in the untrusted directory
    assert os.listdir(real) == []
    if case in ("owned_by_nobody", "group_writable", "world_writable_sticky",
                "parent_owned_by_nobody"):
        assert os.listdir(state) == []


def test_trusted_state_dirs_still_work(tmp_path: pathlib.Path) -> None:
    """Sticky world-writable parents (/tmp, /dev/shm) and root-owned symlinks are fine."""
    shm = pathlib.Path("/dev/shm")
    for base in (tmp_path, shm if shm.is_dir() else tmp_path):
        d = pathlib.Path(os.path.join(base, f"agentlatd-trust-{os.getpid()}"))
        try:
            link = tmp_path / "rootlink"
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(base)
            with Engine(Root("/"), str(link / d.name / "state")) as eng:
                eng.acquire()
            assert (d / "state" / "lock").exists()
        finally:
            subprocess.run(["rm", "-rf", str(d)], check=False)


# -- the journal --------------------------------------------------------------------------


def _crc(knob: str, target: str, original: str, written: str | None, flags: list[str]) -> int:
    return zlib.crc32(json.dumps([knob, target, original, written, flags]).encode())


def _target(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        st = int(f.read().rpartition(")")[2].split()[19])
    return f"{pid}:{st}:{pid}"


def _forged(target: str, *, crc: bool) -> str:
    e: dict[str, object] = {"knob": "task.nice", "target": target, "original": "-20",
                            "written": "10", "flags": []}
    if crc:
        e["crc"] = _crc("task.nice", target, "-20", "10", [])
    boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return json.dumps({"version": 1, "complete": False, "root": "/",
                       "netns": os.readlink("/proc/self/ns/net"), "boot_id": boot, "pid": 1,
                       "entries": [e]})


JOURNALS = ["no_checksum", "owned_by_nobody", "group_writable", "symlink"]


@pytest.mark.parametrize("case", JOURNALS)
def test_journal_agentlatd_did_not_write_is_not_replayed(tmp_path: pathlib.Path,
                                                         case: str) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        state = tmp_path / "state"
        state.mkdir(mode=0o755)
        j = state / "journal.json"
        text = _forged(_target(child.pid), crc=case != "no_checksum")
        if case == "symlink":
            (tmp_path / "elsewhere.json").write_text(text)
            os.chmod(tmp_path / "elsewhere.json", 0o600)
            j.symlink_to(tmp_path / "elsewhere.json")
        else:
            j.write_text(text)
            os.chmod(j, 0o600)
        if case == "owned_by_nobody":
            os.chown(j, NOBODY, NOBODY)
        elif case == "group_writable":
            os.chmod(j, 0o620)
        nice0 = os.getpriority(os.PRIO_PROCESS, child.pid)
        with Engine(Root("/"), str(state)) as eng, pytest.raises(JournalUntrusted) as ei:
            eng.recover()
        msg = str(ei.value)
        assert str(j) in msg and "rollback --print" in msg and f"rm {j}" in msg, msg
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == nice0  # -20 never written
        assert os.path.lexists(j)  # left for a person
        if case not in ("no_checksum", "symlink"):
            return  # the CLI's handling is the same error: checked on two cases only
        # the CLI: one line, exit 1, still nothing written; --print shows it with a warning
        p = subprocess.run([sys.executable, "-m", "agentlatd", "rollback", "--state-dir",
                            str(state)], capture_output=True, text=True, cwd=REPO, timeout=60,
                           check=False, env=env_for_children())
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == nice0
        p = subprocess.run([sys.executable, "-m", "agentlatd", "rollback", "--print",
                            "--state-dir", str(state)], capture_output=True, text=True,
                           cwd=REPO, timeout=60, check=False, env=env_for_children())
        assert p.returncode == 0 and "# WARNING" in p.stdout, p.stdout
        assert ("renice" in p.stdout) == (case != "symlink"), p.stdout  # a link is not read
    finally:
        child.kill()
        child.wait()


def test_journal_written_by_agentlatd_is_0600_and_replayed(tmp_path: pathlib.Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        t = _target(child.pid)
        with Engine(Root("/"), str(tmp_path / "state")) as eng:
            from agentlatd.plan.changes import Change
            rep = eng.apply([Change.parse("task.nice", t, "0", "5", "test")])
            assert rep.count("changed") == 1, rep
        st = os.stat(tmp_path / "state" / "journal.json")
        assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0
        with Engine(Root("/"), str(tmp_path / "state")) as eng:
            assert eng.rollback().ok
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 0
    finally:
        child.kill()
        child.wait()


# -- the socket ---------------------------------------------------------------------------


SOCKET_DIRS = ["owned_by_nobody", "group_writable", "symlink"]


@pytest.mark.parametrize("case", SOCKET_DIRS)
def test_socket_in_an_untrusted_directory_is_refused(tmp_path: pathlib.Path, case: str) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    canary = tmp_path / "canary"
    canary.write_text("x")
    os.chmod(canary, 0o600)
    if case == "owned_by_nobody":
        os.chown(d, NOBODY, NOBODY)
    elif case == "group_writable":
        os.chmod(d, 0o775)
    elif case == "symlink":
        real = d
        d = tmp_path / "link"
        d.symlink_to(real)
    with pytest.raises(SocketError) as ei:
        bind_socket(str(d / "s.sock"), group="daemon")
    assert str(d) in str(ei.value)
    assert not os.path.lexists(d / "s.sock")
    st = os.stat(canary)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)


IN_ATTRIB, IN_CREATE, IN_MOVED_TO = 0x4, 0x100, 0x80


def _inotify_events(fd: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    with contextlib.suppress(BlockingIOError):
        buf = os.read(fd, 1 << 16)
        i = 0
        while i < len(buf):
            _wd, mask, _cookie, n = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode()
            out.append((mask, name))
            i += 16 + n
    return out


def test_socket_is_never_reachable_before_its_mode_and_group_are_set(
        tmp_path: pathlib.Path) -> None:
    """inotify on the socket's directory: the name appears once, already final.

    A chown/chmod by path after bind() (an IN_ATTRIB on the name after it
    appeared) is the window where a swapped-in symlink redirected them.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0
    try:
        assert libc.inotify_add_watch(fd, str(tmp_path).encode(),
                                      IN_ATTRIB | IN_CREATE | IN_MOVED_TO) >= 0
        s = bind_socket(str(tmp_path / "s.sock"), mode=0o660, group="daemon")
        try:
            ev = [(m, n) for m, n in _inotify_events(fd) if n == "s.sock"]
            appeared = [i for i, (m, _) in enumerate(ev) if m & (IN_CREATE | IN_MOVED_TO)]
            assert appeared, ev
            assert not any(m & IN_ATTRIB for m, _ in ev[appeared[0]:]), \
                f"mode/group changed after the socket became reachable: {ev}"
            st = os.stat(tmp_path / "s.sock")
            import grp
            assert st.st_mode & 0o777 == 0o660
            assert st.st_gid == grp.getgrnam("daemon").gr_gid
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(tmp_path / "s.sock"))  # listening from the first moment
            c.close()
        finally:
            s.close()
    finally:
        os.close(fd)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".agentlatd-bind-")]


# -- a journal naming a deleted network namespace -----------------------------------------


def _affinity(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


@pytest.mark.netns
@needs_2cpus
@pytest.mark.parametrize("then", ["rollback", "restart"])
def test_journal_of_a_deleted_netns_does_not_block_rollback_or_start(
        tmp_path: pathlib.Path, then: str) -> None:
    child = subprocess.Popen(["sleep", "120"])
    aff0 = _affinity(child.pid)
    state = tmp_path / "state"
    try:
        with netns_with_veths(1) as v:
            tag = v.devs[0][3:]
            (tmp_path / "agentlatd.toml").write_text(_steering_policy(f"v?0{tag}"))
            sock = tmp_path / "agentlatd.sock"
            logf = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(
                ["ip", "netns", "exec", v.netns, sys.executable, "-m", "agentlatd", "run",
                 "--config", str(tmp_path / "agentlatd.toml"), "--state-dir", str(state),
                 "--socket", str(sock)], stdout=logf, stderr=subprocess.STDOUT,
                env=env_for_children(), cwd=str(tmp_path))
            try:
                def up() -> bool:
                    assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
                    try:
                        return bool(request(sock, "ping", timeout=1.0)["ok"])
                    except OSError:
                        return False
                wait_until(up, 30, what="daemon up")
                ans = request(sock, "register", agent_id="host-proc", pid=child.pid)
                assert ans["ok"], ans
                wait_until(lambda: _affinity(child.pid) == "1", 10, what="child pinned")
                wait_until(lambda: int(request(sock, "status")["result"]["journal_entries"])
                           >= 3, 10, what="device and task entries journaled")
            finally:
                proc.kill()  # kill -9: the journal stays, the child stays pinned
                proc.wait(timeout=10)
                logf.close()
        # netns_with_veths deleted the namespace (ip netns del) and its veths with it
        j = journal_read.read_json(str(state / "journal.json"))  # snapshot and its append log
        assert j is not None
        assert j["netns"] and j["netns"] != os.readlink("/proc/self/ns/net")
        assert {e["knob"] for e in j["entries"]} >= {"task.affinity", "net.rps_cpus"}, j
        assert _affinity(child.pid) == "1"
        if then == "rollback":
            p = subprocess.run([sys.executable, "-m", "agentlatd", "rollback", "--print",
                                "--state-dir", str(state)], capture_output=True, text=True,
                               cwd=REPO, timeout=60, check=False, env=env_for_children())
            assert "no longer exists" in p.stdout and "taskset" in p.stdout, p.stdout
            assert "rps_cpus" not in p.stdout, p.stdout
            p = subprocess.run([sys.executable, "-m", "agentlatd", "rollback", "--state-dir",
                                str(state)], capture_output=True, text=True, cwd=REPO,
                               timeout=60, check=False, env=env_for_children())
            out = p.stdout + p.stderr
            assert p.returncode == 0, out
            assert "no longer exists" in out, out
        else:
            (tmp_path / "host.toml").write_text(policy_text(interval=0.2))
            sock2 = tmp_path / "agentlatd2.sock"
            logf = open(tmp_path / "daemon2.log", "wb")  # noqa: SIM115 - closed below
            proc = subprocess.Popen(
                [sys.executable, "-m", "agentlatd", "run", "--agents-only", "--config",
                 str(tmp_path / "host.toml"), "--state-dir", str(state), "--socket",
                 str(sock2)], stdout=logf, stderr=subprocess.STDOUT, env=env_for_children(),
                cwd=str(tmp_path))
            try:
                def up2() -> bool:
                    assert proc.poll() is None, (tmp_path / "daemon2.log").read_text()
                    try:
                        return bool(request(sock2, "ping", timeout=1.0)["ok"])
                    except OSError:
                        return False
                wait_until(up2, 30, what="second daemon up")
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=30)
                logf.close()
            out = (tmp_path / "daemon2.log").read_text()
            assert rc == 0, out
            assert "no longer exists" in out, out
        assert _affinity(child.pid) == aff0
        assert not (state / "journal.json").exists()
    finally:
        child.kill()
        child.wait()


@pytest.mark.netns
def test_a_netns_held_only_by_its_bind_mount_is_alive() -> None:
    """`ip netns add` leaves no task in the namespace: only its nsfs mount holds it."""
    from agentlatd.sample.namespaces import netns_in_use
    with netns_with_veths(1) as v:
        with open(f"/run/netns/{v.netns}") as f:
            ident = f"net:[{os.fstat(f.fileno()).st_ino}]"  # the nsfs inode
        assert netns_in_use(Root("/"), ident)
    assert not netns_in_use(Root("/"), ident)
    assert netns_in_use(Root("/"), os.readlink("/proc/self/ns/net"))


def _rps(netns: str, dev: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "cat",
                           f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"],
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.mark.netns
@needs_2cpus
@pytest.mark.parametrize("where", ["host", "inside"])
def test_journal_of_a_netns_whose_inode_number_was_reused(tmp_path: pathlib.Path,
                                                         where: str) -> None:
    """A deleted namespace's nsfs inode number goes to the next namespace made (on
    a Kubernetes node, the next pod's). A journal naming that number, with the
    deleted namespace's cookie, stands here for one whose namespace is gone.

    From another namespace (host): before, `rollback` refused ("run agentlatd
    there", pointing at the new namespace) and kept the agent's process pinned.
    From inside the new namespace: before, the number matched this process's
    own, so the journal's device entries were restored onto the new
    namespace's devices of the same names. Now both drop the device entries as
    those of a namespace that no longer exists, and restore the task entry."""
    from agentlatd.sample.namespaces import netns_cookie_at
    child = subprocess.Popen(["sleep", "120"])
    aff0 = _affinity(child.pid)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    try:
        with netns_with_veths(1) as v:
            dev = v.devs[0]
            with open(f"/run/netns/{v.netns}") as f:
                ident = f"net:[{os.fstat(f.fileno()).st_ino}]"
            cookie = netns_cookie_at(f"/run/netns/{v.netns}")
            assert cookie > 0
            rps0 = _rps(v.netns, dev)
            os.sched_setaffinity(child.pid, {1})
            with open(f"/proc/{child.pid}/stat") as f:
                start = int(f.read().rpartition(")")[2].split()[19])
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
            j = journal.Journal(path=journal.journal_path(str(state)), root="/", netns=ident,
                                boot_id=boot, netns_cookie=cookie + 1_000_000)
            j.add("task.affinity", f"{child.pid}:{start}:{child.pid}", aff0).written = "1"
            j.add("net.rps_cpus", f"{dev}/rx-0", "3").written = rps0
            j.save()
            cmd = [sys.executable, "-m", "agentlatd", "rollback", "--state-dir", str(state)]
            if where == "inside":
                cmd = ["ip", "netns", "exec", v.netns, *cmd]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60,
                               check=False, env=env_for_children())
            out = p.stdout + p.stderr
            assert p.returncode == 0, out
            assert "no longer exists" in out, out
            assert _rps(v.netns, dev) == rps0, out  # not the "3" of the gone namespace
        assert _affinity(child.pid) == aff0
        assert not (state / "journal.json").exists()
    finally:
        child.kill()
        child.wait()
