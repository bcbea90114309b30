"""Coverage-guided fuzzing (atheris/libFuzzer) of agentlatd's hostile-input parsers.

    python -m venv /tmp/av && /tmp/av/bin/pip install atheris
    PYTHONPATH=. /tmp/av/bin/python tests/hostile/fuzz_atheris.py protocol -max_total_time=60
    PYTHONPATH=. /tmp/av/bin/python tests/hostile/fuzz_atheris.py policy -runs=200000
    PYTHONPATH=. /tmp/av/bin/python tests/hostile/fuzz_atheris.py journal -runs=200000

Targets: protocol (agentlatd.api.protocol.decode on raw bytes), policy
(agentlatd.policy.loads on text), journal (agentlatd.apply.journal_read.parse).
Any exception other than the parser's own error type is a crash that libFuzzer
reports with the input that caused it (saved as crash-<sha1>).
tests/hostile/test_fuzz_protocol.py runs each for 20000 inputs when atheris
is installed for the interpreter it uses.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from agentlatd.api import protocol
    from agentlatd.apply import journal_read
    from agentlatd.errors import JournalError, PolicyError
    from agentlatd.policy import loads


def fuzz_protocol(data: bytes) -> None:
    try:
        protocol.decode(data)
    except protocol.ProtocolError as e:
        if not e.code or not e.message:
            raise AssertionError(f"error without code or sentence: {e!r}") from None


def fuzz_policy(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    with contextlib.suppress(PolicyError):
        loads(text, "fuzz.toml")


def fuzz_journal(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    with contextlib.suppress(JournalError):
        journal_read.parse("/fuzz/journal.json", text)


TARGETS = {"protocol": fuzz_protocol, "policy": fuzz_policy, "journal": fuzz_journal}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
