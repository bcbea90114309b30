"""The import contract of agentlatd/, checked on the source (docs: README, design/style.md).

    sysfs, kernel, netlink  <-  sample  <-  model  <-  plan  <-  apply  <-  the daemon's side
        <-  the entry points and tools (cli, commands, tools)

    the daemon's side: daemon, service, agents, api, metrics, steps, client, ...

- layer:   a module of one layer imports nothing of a layer to its right; the base modules
           (errors, cpuset, policy, safepath, exitcodes, jsonout, wire, stepstats, the
           package itself) are importable from every layer and import only base modules and kernel/
- pure:    model/ and plan/ import no IO module (os, socket, subprocess, ..., agentlatd.sysfs,
           agentlatd.netlink, agentlatd.safepath) and call no open()
- api:     api/ imports nothing of agents/ (the wire protocol knows no agent internals)
- client:  agentlatd/client.py, and everything it imports in turn, stays out of the daemon's
           side: no policy, agents, daemon, service, model, plan, apply, commands, cli
- cycle:   no import cycle among agentlatd modules (top-level imports only: what runs at import)
- tools:   the daemon's import closure (what `agentlatd run` can import: commands/run.py and
           everything it reaches, function-local and by-name imports included) holds nothing of
           agentlatd/tools/ and no other command; a subprocess checks the same on sys.modules
- local:   no function-local import of agentlatd's own modules (they hide cycles and layer
           breaks from a reader of the module's header)

An AST walk rather than import-linter: no new dependency, one pass of ast over the 120
modules (~0.5 s), and rules import-linter's contracts cannot state: its graph (grimp) does
not tell a function-local import from a top-level one, and it sees neither
importlib.import_module("agentlatd....") calls and module-name tables such as
cli.py's COMMANDS, nor open() calls in the pure layers.

ALLOWED lists every violation the code had when this test was written: the debt. A new
violation fails the test with the rule and the two modules; a fixed one fails it too, until
its line is removed here, so the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

PKG = pathlib.Path(__file__).resolve().parents[2] / "agentlatd"

LAYERS: dict[str, int] = {"sysfs": 0, "kernel": 0, "netlink": 0, "sample": 1, "model": 2,
                          "plan": 3, "apply": 4}
DAEMON_SIDE = 5  # every other package and module
TOP = 6
TOP_PACKAGES = frozenset({"__main__", "cli", "commands", "tools"})  # entry points and tools
DAEMON_ROOT = "agentlatd.commands.run"  # `agentlatd run`: cli.py loads only this command
BASE = frozenset({"agentlatd", "agentlatd.errors", "agentlatd.cpuset", "agentlatd.policy",
                  "agentlatd.safepath", "agentlatd.exitcodes", "agentlatd.jsonout",
                  "agentlatd.wire", "agentlatd.stepstats"})
PURE_LAYERS = ("model", "plan")
IO_MODULES = frozenset({"os", "socket", "subprocess", "shutil", "fcntl", "select", "selectors",
                        "ctypes", "mmap", "signal", "pyroute2", "agentlatd.sysfs",
                        "agentlatd.netlink", "agentlatd.safepath"})
CLIENT = "agentlatd.client"
CLIENT_FORBIDDEN = ("agentlatd.policy", "agentlatd.agents", "agentlatd.daemon",
                    "agentlatd.service", "agentlatd.model", "agentlatd.plan", "agentlatd.apply",
                    "agentlatd.commands", "agentlatd.cli", "agentlatd.metrics")

Violation = tuple[str, str, str]  # (rule, importer, imported)

# The debt: each line a violation found when the contract was written. Fix the code, then
# delete the line. Never add one without saying here why it must stay.
ALLOWED: frozenset[Violation] = frozenset()


@dataclass(frozen=True, slots=True)
class Edge:
    importer: str
    imported: str
    line: int
    local: bool  # inside a function: runs at call time, not import time
    typing_only: bool  # under `if TYPE_CHECKING:`
    dynamic: bool  # importlib.import_module("...") or a module name held in a string


def modules() -> dict[str, pathlib.Path]:
    out: dict[str, pathlib.Path] = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _resolve(mods: dict[str, pathlib.Path], importer: str, is_pkg: bool,
             node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = importer.split(".")
        if not is_pkg:
            base.pop()
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join([*base, *([node.module] if node.module else [])])
    else:
        prefix = node.module or ""
    # `from agentlatd.agents import tasks` imports the module agentlatd.agents.tasks
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def edges(mods: dict[str, pathlib.Path]) -> Iterator[Edge]:
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_pkg = path.name == "__init__.py"

        def walk(node: ast.AST, local: bool, typing_only: bool,
                 name: str = name, is_pkg: bool = is_pkg) -> Iterator[Edge]:
            for child in ast.iter_child_nodes(node):
                c_local = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
                c_typing = typing_only or (isinstance(child, ast.If) and _is_type_checking(child))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _resolve(mods, name, is_pkg, child):
                        yield Edge(name, target, child.lineno, c_local, c_typing, False)
                elif (isinstance(child, ast.Constant) and isinstance(child.value, str)
                      and child.value in mods and child.value != name):
                    # importlib.import_module("agentlatd.x"), or a table of such names
                    yield Edge(name, child.value, child.lineno, c_local, c_typing, True)
                yield from walk(child, c_local, c_typing)

        yield from walk(tree, False, False)


def calls_open(path: pathlib.Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name) and n.func.id == "open"]


def layer_of(mod: str) -> int | None:
    """None: a base module; else its layer."""
    if mod in BASE:
        return None
    parts = mod.split(".")
    if len(parts) == 1:
        return TOP
    return TOP if parts[1] in TOP_PACKAGES else LAYERS.get(parts[1], DAEMON_SIDE)


def _within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp: set[str] = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


@functools.cache
def violations() -> dict[Violation, str]:
    """Every violation of the contract -> where (file:line), for the failure message."""
    mods = modules()
    found: dict[Violation, str] = {}
    all_edges = list(edges(mods))

    def add(rule: str, e: Edge) -> None:
        found.setdefault((rule, e.importer, e.imported),
                         f"{mods[e.importer].relative_to(PKG.parent)}:{e.line}")

    for e in all_edges:
        own = _within(e.imported, "agentlatd")
        if own and e.imported not in mods:
            raise AssertionError(f"{e.importer}:{e.line} imports {e.imported}: no such module")
        if own:
            src, dst = layer_of(e.importer), layer_of(e.imported)
            if src is None:  # a base module: only base modules and kernel/ tables below it
                if dst is not None and dst != LAYERS["kernel"]:
                    add("layer", e)
            elif dst is not None and dst > src:
                add("layer", e)
            if e.local and not e.dynamic:
                add("local", e)
            if _within(e.importer, "agentlatd.api") and _within(e.imported, "agentlatd.agents"):
                add("api", e)
        if any(_within(e.importer, f"agentlatd.{p}") for p in PURE_LAYERS) and any(
                _within(e.imported, io) for io in IO_MODULES):
            add("pure", e)

    for name, path in mods.items():
        if any(_within(name, f"agentlatd.{p}") for p in PURE_LAYERS):
            for line in calls_open(path):
                found.setdefault(("pure", name, "open()"),
                                 f"{path.relative_to(PKG.parent)}:{line}")

    # what `import agentlatd.client` runs: its top-level imports, transitively
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for e in all_edges:
        if e.imported in mods and not e.local and not e.typing_only and not e.dynamic:
            graph[e.importer].add(e.imported)
    seen, todo = {CLIENT}, [CLIENT]
    via: dict[str, str] = {}
    while todo:
        m = todo.pop()
        for n in sorted(graph[m]):
            if n not in seen:
                seen.add(n)
                via[n] = m
                todo.append(n)
    for m in sorted(seen):
        if any(_within(m, p) for p in CLIENT_FORBIDDEN):
            chain = [m]
            while chain[-1] != CLIENT:
                chain.append(via[chain[-1]])
            found[("client", CLIENT, m)] = " <- ".join(chain)

    # what `agentlatd run` can import: every edge but the typing-only ones
    runtime: dict[str, set[str]] = {m: set() for m in mods}
    for e in all_edges:
        if e.imported in mods and not e.typing_only:
            runtime[e.importer].add(e.imported)
    seen, todo, via = {DAEMON_ROOT}, [DAEMON_ROOT], {}
    while todo:
        m = todo.pop()
        for n in sorted(runtime[m]):
            if n not in seen:
                seen.add(n)
                via[n] = m
                todo.append(n)
    for m in sorted(seen):
        if _within(m, "agentlatd.tools") or (_within(m, "agentlatd.commands") and m not in (
                "agentlatd.commands", DAEMON_ROOT)):
            chain = [m]
            while chain[-1] != DAEMON_ROOT:
                chain.append(via[chain[-1]])
            found[("tools", DAEMON_ROOT, m)] = " <- ".join(chain)

    for comp in _cycles(graph):
        members = sorted(comp)
        found[("cycle", members[0], " ".join(members[1:]))] = "a top-level import cycle"
    packages: dict[str, set[str]] = {}
    for a, bs in graph.items():
        for b in bs:
            pa, pb = _package(a), _package(b)
            if pa != pb:
                packages.setdefault(pa, set()).add(pb)
    for comp in _cycles(packages):
        members = sorted(comp)
        found[("package cycle", members[0], " ".join(members[1:]))] = "\n".join(
            f"    {a} -> {b}" for a, bs in sorted(graph.items()) for b in sorted(bs)
            if _package(a) in comp and _package(b) in comp and _package(a) != _package(b))
    return found


def _package(mod: str) -> str:
    """agentlatd.X for a module of agentlatd/X/ or agentlatd/X.py; agentlatd.tools.X for
    one of agentlatd/tools/X/ (each tool is a package of its own)."""
    parts = mod.split(".")
    return ".".join(parts[:3] if parts[1:2] == ["tools"] else parts[:2])


def test_no_new_layering_violation() -> None:
    found = violations()
    new = sorted(set(found) - ALLOWED)
    assert not new, "forbidden imports (tests/unit/test_layering.py says why):\n" + "\n".join(
        f"  {rule}: {a} imports {b}   ({found[(rule, a, b)]})" for rule, a, b in new)


def test_allowlist_has_no_fixed_violation() -> None:
    stale = sorted(ALLOWED - set(violations()))
    assert not stale, "fixed: delete these lines from ALLOWED:\n" + "\n".join(
        f"  {v!r}," for v in stale)


def test_the_walk_sees_the_import_forms_it_checks() -> None:
    # the checker itself: each import form it relies on is seen in the real tree
    es = list(edges(modules()))
    assert any(e.importer == "agentlatd.daemon" and e.imported == "agentlatd.apply.engine"
               and not e.local for e in es)
    assert any(e.dynamic and e.importer == "agentlatd.cli" for e in es)
    assert any(e.typing_only for e in es)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        frozenset({"a", "b", "c"})]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _after_start(code: str) -> str:
    """The output of `code`, run in a fresh interpreter after what a daemon's start
    imports (the cli, the daemon and the service hooks)."""
    prelude = "import sys; from agentlatd import cli; import agentlatd.daemon, agentlatd.service; "
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=PKG.parent,
                          capture_output=True, text=True, check=True, timeout=60).stdout


def test_the_daemon_process_imports_no_tool() -> None:
    # the same contract at run time: what `agentlatd run --help` has imported once its
    # parser is built (cli.main's path up to parse_args), daemon included
    out = _after_start("cli.build_parser(cli.command_of(['run', '--help'])); "
                       "print('\\n'.join(m for m in sys.modules if m.startswith('agentlatd.')))"
                       ).split()
    assert "agentlatd.commands.run" in out and "agentlatd.daemon" in out
    loaded = sorted(m for m in out if _within(m, "agentlatd.tools") or (
        _within(m, "agentlatd.commands") and m not in ("agentlatd.commands", DAEMON_ROOT)))
    assert not loaded, f"the daemon's process imports tools or other commands: {loaded}"


def test_pyroute2_is_not_imported_by_every_command() -> None:
    # pyroute2's package imports all of itself (asyncio, NDB, IPDB, conntrack: ~130 ms
    # of a command's start, 0.41 -> 0.33 s for the daemon's imports); only the
    # generic netlink knobs need it, and they import it when they build a message
    out = _after_start(
        "[cli.build_parser(c) for c in ('run', 'plan', 'status', 'apply', 'agents')]; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'asyncio')))"
    ).strip()
    assert out == "[]", f"imported at a command's start: {out}"
