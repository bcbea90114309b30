"""irqbalance's socket commands, as its sock_handle() parses them (irqbalance.c, v1.9.2).

A table, no IO: the planner sizes its IRQ ban with it and
apply/irqbalance_ban.py sends it.

  "settings ban irqs <n n ..>"  replaces the banned IRQ list; numbers read with a
                                strtoul() loop that ends at a 0 ("NONE": empty)
sock_handle() reads one recvmsg() into `char buff[500]`: a longer command is cut.
"""

from __future__ import annotations

MAX_COMMAND = 499  # bytes of one command that fit sock_handle()'s buff[500]
BAN_IRQS = "settings ban irqs "


def ban_irqs_command(irqs: tuple[int, ...]) -> str:
    """The command that makes `irqs` irqbalance's banned IRQs."""
    return BAN_IRQS + (" ".join(str(i) for i in irqs) if irqs else "NONE")
