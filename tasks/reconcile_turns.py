"""The farm's periodic reconcile pass, run from a worker's announcement thread: one worker per period."""

from __future__ import annotations

import logging
import time

from tasks.context import WorkerContext
from tasks.reconcile import reconcile, take_turn

log = logging.getLogger(__name__)


class Reconciler:
    """Called on every announcement beat; runs a pass when its period is up and no other worker took it."""

    def __init__(self, ctx: WorkerContext, holder: str) -> None:
        self.ctx, self.holder = ctx, holder
        self._next = time.monotonic() + ctx.settings.reconcile_every_s

    def beat(self) -> None:
        every = self.ctx.settings.reconcile_every_s
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + every
        if not take_turn(self.ctx.runs.r, self.holder, every):
            return
        ctx = self.ctx
        result = reconcile(ctx.runs, ctx.sender, ctx.scheduler, grace_s=every, restore=ctx.sender.restore)
        if result.from_outbox or result.resent:
            log.warning(
                "reconcile: sent %d step(s) left in an outbox and %d whose message was lost",
                result.from_outbox,
                result.resent,
            )
        elif result.missing:
            log.info(
                "reconcile: %d step(s) without a message; sent again next pass if still so", result.missing
            )
        if result.restored:
            log.warning("reconcile: put back %d step(s) a gone worker was running", result.restored)
        elif result.orphaned:
            log.info(
                "reconcile: %d running step(s) on a gone worker; put back next pass if still so",
                result.orphaned,
            )
