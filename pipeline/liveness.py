"""Which gloss processes are alive, and cleaning up after the ones that died.

Every process that works on the database is a *holder*, named `host:pid` (a stage
inside it `host:pid#n`, so two stages of one process never share a claim). It stamps
its runs, claims and lock with that name and keeps them fresh with a heartbeat
thread. When a process dies (kill -9, a lost machine), the next process to start
work sweeps up after it: its runs are marked abandoned (stage runs inside it too)
and its claims released, at once when it ran on this host and is gone, otherwise
once its heartbeat is older than `stale_after_s`.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from gloss.store import Store
from gloss.store.models import utcnow

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
LEASE_S = 300.0  # a claim outlives its holder's last heartbeat this long
STALE_AFTER_S = 900.0


_stages = itertools.count(1)


def holder_name(stage: bool = False) -> str:
    """This process as a holder; with `stage`, a name no other stage of it shares."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    return f"{name}#{next(_stages)}" if stage else name


def holder_is_dead(holder: str | None) -> bool:
    """True only when the holder ran on this host and its process is gone."""
    host, _, pid = (holder or "").partition("#")[0].rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Heartbeat(threading.Thread):
    """Keeps this process's lock, runs and claims fresh while it works."""

    def __init__(self, store: Store, holder: str, every_s: float = HEARTBEAT_S):
        super().__init__(daemon=True, name="gloss-heartbeat")
        self.store, self.holder, self.every_s = store, holder, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                self.store.heartbeat(self.holder, LEASE_S)
            except Exception as error:  # noqa: BLE001 - a missed beat is only logged
                log.warning("heartbeat failed: %s", error)


@contextmanager
def heartbeat(store: Store, holder: str | None = None) -> Iterator[str]:
    """Beat for the block; yields the holder name (a new stage holder unless given)."""
    holder = holder or holder_name(stage=True)
    beat = Heartbeat(store, holder)
    beat.start()
    try:
        yield holder
    finally:
        beat.stopped.set()


def sweep(store: Store, stale_after_s: float = STALE_AFTER_S) -> list[int]:
    """Mark the runs of dead processes abandoned and release their claims; returns run ids."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_after_s)
    running = store.running_runs()
    open_ids = {run.id for run in running}
    abandoned: list[int] = []
    for run in running:
        last = run.heartbeat_at or run.started_at
        if holder_is_dead(run.holder):
            why = f"its process {run.holder} died"
        elif last < stale:
            why = f"no heartbeat from {run.holder or 'its process'} since {last:%Y-%m-%d %H:%M:%S} UTC"
        elif run.parent_id is not None and (
            run.parent_id in abandoned or run.parent_id not in open_ids
        ):
            why = f"its parent run {run.parent_id} ended"
        else:
            continue
        log.warning("run %d was left running: marked abandoned (%s)", run.id, why)
        store.finish_run(run.id, "abandoned", why)
        abandoned.append(run.id)
    for holder in store.claim_holders():
        if holder_is_dead(holder):
            store.drop_claims(holder)
    return abandoned
