"""Exceptions that cross module boundaries. Each carries a sentence for a person."""

from __future__ import annotations

import errno as _errno
import os

from agentlatd.kernel.errnos import ErrClass, classify


class AgentlatdError(Exception):
    """Base class: str(e) is a complete sentence fit for the user."""


class PolicyError(AgentlatdError):
    """A policy file that does not validate: names the file, line, key path, expectation."""

    def __init__(self, message: str, *, file: str = "<policy>", line: int | None = None,
                 key: str = "") -> None:
        self.file = file
        self.line = line
        self.key = key
        self.detail = message
        where = file if line is None else f"{file}:{line}"
        keypart = f" [{key}]" if key else ""
        super().__init__(f"{where}:{keypart} {message}")


class KernelError(AgentlatdError):
    """An OSError from a kernel interface, translated once at the IO boundary."""

    def __init__(self, op: str, path: str, err: int, context: str | None = None,
                 value: str | None = None) -> None:
        self.op = op
        self.path = path
        self.errno = err
        self.errclass: ErrClass = classify(err, context)
        self.value = value
        name = _errno.errorcode.get(err, str(err))
        what = f"{op} {path}" + (f" <- {value!r}" if value is not None else "")
        super().__init__(f"{what}: {name} ({os.strerror(err)}) [{self.errclass.value}]")


class JournalError(AgentlatdError):
    """The rollback journal cannot be read or written."""
