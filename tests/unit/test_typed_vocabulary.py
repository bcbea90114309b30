"""Wire ops and agent/member states are enums (wire.Op, agents.agent.AgentState,
agents.chainrow.MemberState), never compared as string literals in agentlatd/.

An AST walk over every module: a comparison (==, !=, in, not in, is, is not) between
something named `op` or `state` (a name or an attribute: `op`, `w.op`, `a.state`) and a
string literal (or a tuple, list or set of them) that spells an Op, AgentState or
MemberState value fails, with the file and line. mypy cannot catch these: a StrEnum is a
str, so `a.state == "placed"` type-checks and keeps working until the value is renamed.
Other `state` fields with their own vocabulary (a socket's TCP state, a task's "Z",
steps/attribute.py's "run"/"sleep") use no value of these enums and are not matched.
"""

from __future__ import annotations

import ast
import pathlib

from agentlatd.agents.agent import AgentState
from agentlatd.agents.chainrow import MemberState
from agentlatd.wire import Op

PKG = pathlib.Path(__file__).resolve().parents[2] / "agentlatd"
NAMES = frozenset({"op", "state"})
VALUES = frozenset({str(v) for e in (Op, AgentState, MemberState) for v in e})
COMPARE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)


def _named(node: ast.expr) -> bool:
    return ((isinstance(node, ast.Name) and node.id in NAMES)
            or (isinstance(node, ast.Attribute) and node.attr in NAMES))


def _literals(node: ast.expr) -> list[str]:
    """The known enum values `node` spells as string literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in VALUES else []
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for elt in node.elts for v in _literals(elt)]
    return []


def string_comparisons(source: str, filename: str) -> list[str]:
    """'FILE:LINE: <comparison>' for each op/state comparison with a string literal."""
    out: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Compare) or not any(isinstance(o, COMPARE_OPS)
                                                        for o in node.ops):
            continue
        sides = [node.left, *node.comparators]
        if any(_named(s) for s in sides) and any(_literals(s) for s in sides):
            out.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_no_string_literal_op_or_state_comparisons() -> None:
    found: list[str] = []
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG.parent))
        found += string_comparisons(path.read_text(encoding="utf-8"), rel)
    assert not found, ("compare with the enum (Op, AgentState, MemberState), not a string:\n"
                       + "\n".join(found))


def test_the_check_finds_each_form() -> None:
    """The walk is not vacuous: each form the daemon used before the enums is found."""
    bad = '\n'.join([
        'if op == "register": pass',
        'if w.op != "unregister": pass',
        'x = a.state in ("placed", "partial")',
        'y = [m for m in ms if m.state == "unmovable"]',
        'z = "slow_steps" == env.op',
    ])
    assert len(string_comparisons(bad, "t.py")) == 5
    fine = '\n'.join([
        'if op is Op.REGISTER: pass',
        'x = a.state in (AgentState.PLACED, AgentState.PARTIAL)',
        'y = st.state in ("Z", "X")',  # a task's state letter: not this vocabulary
        'z = sg.state == "sleep"',
        'w = name == "register"',  # not an op or a state
    ])
    assert string_comparisons(fine, "t.py") == []
