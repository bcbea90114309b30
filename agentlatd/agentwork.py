"""The main loop's writes, made holding the engine's lock (daemon.py's turn()).

Registrations and unregisters waiting for the engine are answered first, then
the agent tick (the registry's upkeep, then the chain keeper's) runs as a
generator of bounded pieces: a slice of about TICK_SLICE_S per loop turn, with
requests served between slices, so a registration waits for one slice, not a
whole tick. Each phase is guarded: a journal that cannot be written (ENOSPC on
the state directory) or a bug in one phase is answered and logged, and the
loop serves on; nothing is written without its original journaled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from agentlatd.agents.chain import ChainKeeper
from agentlatd.agents.refusal import AgentRefused, Refusal
from agentlatd.agents.registry import AgentManager
from agentlatd.api import protocol
from agentlatd.api.server import Server
from agentlatd.errors import AgentlatdError
from agentlatd.handlers import Handlers
from agentlatd.sample.tasks import ProcId
from agentlatd.wire import Op

log = logging.getLogger("agentlatd.daemon")

# the agent tick runs in slices of about this long (seconds) with requests
# served between them: a registration waits for one slice, not a whole tick
TICK_SLICE_S = 0.0003


def failed(what: str, e: BaseException) -> None:
    if isinstance(e, AgentlatdError):
        log.error("%s failed: %s", what, e)
    else:
        log.exception("%s failed", what)


class AgentWork:
    def __init__(self, manager: AgentManager, chain: ChainKeeper, handlers: Handlers,
                 publish: Callable[[], Iterator[None]]) -> None:
        self.manager = manager
        self.chain = chain
        self.handlers = handlers
        # the tuner's next input and the slow-steps view's targets, once per
        # agent tick, as the tick's last pieces
        self._publish = publish
        self._job: Iterator[None] | None = None  # the agent tick under way
        # agent-side ticks completed (the tuner's own count is TunerState.seq): status shows
        # both, so a test can wait for ticks to pass instead of sleeping
        self.ticks = 0

    @property
    def ticking(self) -> bool:
        """An agent tick is under way (the loop should not sleep)."""
        return self._job is not None

    def begin_tick(self) -> None:
        self._job = self._tick()

    def run(self, server: Server, pending: Callable[[], bool] | None = None) -> None:
        """Everything that writes: unregisters, placements, a slice of the tick (lock held).

        `pending()`: a request (or an exit) waits to be read; the slice ends at the
        first piece boundary after one arrives, so a registration waits for one
        piece of the tick (~0.1 ms), not the rest of a slice."""
        # Each phase is guarded: a journal that cannot be written (ENOSPC on the
        # state directory) or a bug in one phase is answered and logged, and the
        # loop serves on; nothing is written without its original journaled.
        waiting = self.handlers.take_waiting()
        for w in waiting:
            if w.op is Op.UNREGISTER:
                try:
                    self.handlers.finish_unregister(server, w)
                except Exception as e:
                    failed("unregister", e)
                    server.fail(w.conn, w.req_id, protocol.UNAVAILABLE,
                                     f"agentlatd could not restore the process's originals: {e}")
        outcome: dict[ProcId, AgentRefused | None] = {}
        try:
            self.manager.reap()
            outcome = self.manager.place_pending()
        except Exception as e:  # place_pending answers journal errors itself; a bug here
            failed("placement", e)
            outcome = {w.proc: AgentRefused(Refusal.INTERNAL, "agentlatd failed to place the "
                                            "agent; the daemon log has the details")
                       for w in waiting if w.op is Op.REGISTER}
        for w in waiting:
            if w.op is Op.REGISTER:
                self.handlers.answer_register(server, w, outcome.get(w.proc))
        if self.manager.forks.unsynced:  # after the answers: no client waits for it
            try:
                self.manager.journal_forks()
            except Exception as e:
                failed("journaling forked processes", e)
        if self._job is None:
            try:
                self.manager.upkeep.reconcile_cpus(full=False)
            except Exception as e:
                failed("agent tick", e)
            return
        # a slice of the agent tick; requests are served between slices
        end = time.perf_counter() + TICK_SLICE_S
        try:
            while True:
                next(self._job)
                if time.perf_counter() >= end or (pending is not None and pending()):
                    return
        except StopIteration:
            self._job = None

    def _tick(self) -> Iterator[None]:
        """The agent side's tick as a generator of bounded pieces (lock held while
        each runs): the registry's upkeep, then the chain keeper's."""
        try:
            yield from self.manager.upkeep.steps()
        except Exception as e:
            failed("agent tick", e)
        try:
            yield from self.chain.tick_steps()
            # the keeper's decisions (members protected, exclusivity allowed or
            # undone) reach the registry here, once per tick, as one value
            decided = yield from self.chain.decisions_steps()
            self.manager.set_chain(decided)
            yield
            self.manager.upkeep.reconcile_cpus(full=False)
            yield
        except Exception as e:
            failed("chain tick", e)
        # once per tick, not per registration: O(agents), and the tuner reads
        # it once per tick anyway (bench/agents.py: per registration it cost
        # ~0.6 ms of register round trip with 1000 agents); in pieces, as above
        try:
            yield from self._publish()
        except Exception as e:
            failed("publish", e)
        self.ticks += 1
