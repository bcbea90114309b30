"""irqbalance's socket commands, as its sock_handle() parses them (irqbalance.c, v1.9.2).

A table, no IO: the planner sizes its IRQ ban with it and
apply/irqbalance_ban.py sends it.

  "settings ban irqs <n n ..>"  replaces the banned IRQ list; numbers read with a
                                strtoul() loop that ends at a 0 ("NONE": empty)
sock_handle() reads one recvmsg() into `char buff[500]`: a longer command is cut.

Without the socket, the environment file's IRQBALANCE_ARGS carries the IRQ ban
as --banirq=N options (irqbalance.c parse_command_line(): getopt_long "banirq",
short "i", one IRQ an option): agentlatd's irqbalance.env_banned_cpus value
names the CPUs and those IRQs, env_value() below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_COMMAND = 499  # bytes of one command that fit sock_handle()'s buff[500]
BAN_IRQS = "settings ban irqs "


def ban_irqs_command(irqs: tuple[int, ...]) -> str:
    """The command that makes `irqs` irqbalance's banned IRQs."""
    return BAN_IRQS + (" ".join(str(i) for i in irqs) if irqs else "NONE")


BANIRQ = " banirq="  # the IRQ part of an irqbalance.env_banned_cpus value


def env_value(cpus: str, irqs: Iterable[int] | None) -> str:
    """An irqbalance.env_banned_cpus value: the CPU list to ban, and (None: none,
    irqbalance keeps every IRQ) the IRQs banned with --banirq: "2-3 banirq=0,40"."""
    if irqs is None:
        return cpus
    return f"{cpus}{BANIRQ}{','.join(str(i) for i in sorted(set(irqs)))}"


def split_env_value(value: str) -> tuple[str, tuple[int, ...] | None] | None:
    """env_value()'s parts (cpu list, IRQs or None); None when `value` is not one
    (the environment file's text, as the knob reads it)."""
    m = _ENV_VALUE.match(value)
    if m is None:
        return None
    irqs = m.group(2)
    if irqs is None:
        return m.group(1).strip(), None
    return m.group(1).strip(), tuple(int(i) for i in irqs.split(",") if i)


_ENV_VALUE = re.compile(r"^([0-9,\-\s]*?)(?: banirq=((?:[0-9]+(?:,[0-9]+)*)?))?$")
