"""Runs, locks, claims and the LLM ledger: who is working, and what their work cost.

- A run is one invocation of a stage or of the nightly job, with its config, counts,
  tokens and cost; its holder (host:pid) and heartbeat let the next run tell a live
  run from one whose process died.
- A run group is the nightly job's workers on one plan: each `gloss run` process is a
  worker run inside the running group of its plan (or starts one), and the group's row
  holds the budget they share, booked before each call and settled after it.
- A named lock keeps the nightly job to one process at a time on SQLite; a stale lock
  is taken over.
- A claim keeps two processes from paying for the same feature's LLM work; its lease
  is renewed by `heartbeat` and expires when the holder dies.
- The LLM ledger (`llm_calls`) records every call whatever it answered, and serves
  earlier successful answers as a cache.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gloss.store.base import StoreBase, check_id
from gloss.store.errors import InputError, LockedError, NotFoundError
from gloss.store.models import (
    Claim,
    Explanation,
    Feature,
    FeatureScore,
    LLMCall,
    Lock,
    MiningUnit,
    Run,
    Score,
    utcnow,
)
from gloss.store.statuses import RunStatus
from gloss.store.types import LockInfo, RunInfo

GROUP = "group"  # the kind of a run group's row; its workers are runs of kind "run"
_SEVERITY = (RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.PARTIAL, RunStatus.DONE)


class Runs(StoreBase):
    # ------------------------------------------------------------ runs

    def start_run(
        self,
        kind: str,
        config: dict[str, Any],
        code_version: str = "",
        *,
        parent_id: int | None = None,
        holder: str | None = None,
    ) -> int:
        """A new run in status running; `holder` (host:pid) lets a dead process's run be found."""
        now = utcnow()
        with self.session() as s:
            run = Run(
                kind=kind,
                config=config,
                code_version=code_version,
                counts={},
                failures=[],
                parent_id=parent_id,
                holder=holder,
                started_at=now,
                heartbeat_at=now,
            )
            s.add(run)
            s.flush()
            return run.id

    def update_run(self, run_id: int, **values: Any) -> None:
        """Set run columns (counts, failures, tokens_in, tokens_out, cost, status, message)."""
        if "status" in values and values["status"] not in tuple(RunStatus):
            raise InputError(
                f"unknown run status {values['status']!r}: use one of {', '.join(RunStatus)}"
            )
        with self.session() as s:
            s.execute(update(Run).where(Run.id == run_id).values(**values))

    def finish_run(
        self, run_id: int, status: str, message: str | None = None, **values: Any
    ) -> None:
        self.update_run(run_id, status=status, message=message, finished_at=utcnow(), **values)

    def running_runs(self) -> list[RunInfo]:
        """Runs still marked running, oldest first: live ones, and any whose process died."""
        with self.session() as s:
            return [
                _run_info(r)
                for r in s.scalars(
                    select(Run).where(Run.status == RunStatus.RUNNING).order_by(Run.id)
                )
            ]

    def heartbeat(self, holder: str, lease_s: float) -> None:
        """This process is alive: its lock, its running runs and its claims stay fresh."""
        now = utcnow()
        with self.session() as s:
            s.execute(update(Lock).where(Lock.holder == holder).values(heartbeat_at=now))
            s.execute(
                update(Run)
                .where(Run.holder == holder, Run.status == RunStatus.RUNNING)
                .values(heartbeat_at=now)
            )
            for leased in (Claim, MiningUnit):
                s.execute(
                    update(leased)
                    .where(leased.holder == holder)
                    .values(expires_at=now + timedelta(seconds=lease_s))
                )
        # A group beats while any of its workers does. Its own transaction: a budget
        # booking locks the group's row before a worker's, and this must not lock them
        # the other way round.
        with self.session() as s:
            workers = select(Run.parent_id).where(
                Run.holder == holder, Run.status == RunStatus.RUNNING, Run.parent_id.is_not(None)
            )
            s.execute(
                update(Run).where(Run.id.in_(workers), Run.kind == GROUP).values(heartbeat_at=now)
            )

    def run(self, run_id: int) -> RunInfo:
        check_id(run_id, "run")
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise NotFoundError(f"no run with id {run_id}")
            return _run_info(run)

    def runs(
        self,
        limit: int = 20,
        *,
        kind: str | None = None,
        parent_id: int | None = None,
        plan_key: str | None = None,
    ) -> list[RunInfo]:
        """The newest runs first: of one kind, inside one run (a group's workers), or the
        groups of one plan."""
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        for column, value in (
            (Run.kind, kind),
            (Run.parent_id, parent_id),
            (Run.plan_key, plan_key),
        ):
            if value is not None:
                query = query.where(column == value)
        with self.session() as s:
            return [_run_info(r) for r in s.scalars(query)]

    # ------------------------------------------------------------ run groups

    def join_group(
        self,
        plan_key: str,
        config: dict[str, Any],
        code_version: str = "",
        *,
        holder: str,
        device: str | None = None,
        max_tokens: int | None = None,
        max_cost: float | None = None,
        stale_after_s: float = 900.0,
    ) -> tuple[int, int]:
        """(group id, worker run id): a new worker run inside the running group of this plan,
        or inside a new group when none has beaten within `stale_after_s`."""
        now = utcnow()
        with self.serialized(key=f"plan:{plan_key}") as s:
            group = s.scalars(
                select(Run)
                .where(
                    Run.kind == GROUP,
                    Run.plan_key == plan_key,
                    Run.status == RunStatus.RUNNING,
                    Run.heartbeat_at >= now - timedelta(seconds=stale_after_s),
                )
                .order_by(Run.id.desc())
                .limit(1)
            ).first()
            if group is None:
                group = Run(kind=GROUP, plan_key=plan_key, config=config, counts={}, failures=[],
                            code_version=code_version, started_at=now, heartbeat_at=now,
                            max_tokens=max_tokens, max_cost=max_cost)  # fmt: skip
                s.add(group)
                s.flush()
            worker = Run(kind="run", parent_id=group.id, holder=holder, device=device,
                         config=config, counts={}, failures=[], code_version=code_version,
                         started_at=now, heartbeat_at=now)  # fmt: skip
            s.add(worker)
            s.flush()
            return group.id, worker.id

    def leave_group(
        self, group_id: int, run_id: int, status: str, message: str | None = None, **values: Any
    ) -> str | None:
        """End a worker's run; the last worker out ends the group (its status is returned)."""
        self.finish_run(run_id, status, message, reserved_tokens=0, reserved_cost=0.0, **values)
        return self.close_group(group_id)

    def close_group(self, group_id: int) -> str | None:
        """End a group none of whose workers is running any more; None while one is.

        Its status is the worst of its workers' (failed, interrupted, partial, done),
        leaving out workers that died: their work was taken over by the others.
        """
        with self.session() as s:
            plan_key = s.scalar(select(Run.plan_key).where(Run.id == group_id, Run.kind == GROUP))
        if plan_key is None:
            return None
        with self.serialized(key=f"plan:{plan_key}") as s:
            group = s.get(Run, group_id)
            if group is None or group.status != RunStatus.RUNNING:
                return None
            workers = s.scalars(select(Run).where(Run.parent_id == group_id).order_by(Run.id)).all()
            if any(w.status == RunStatus.RUNNING for w in workers):
                return None
            ended = [w for w in workers if w.status != RunStatus.ABANDONED]
            status = next(
                (st for st in _SEVERITY if any(w.status == st for w in ended)),
                RunStatus.ABANDONED,
            )
            tally = ", ".join(
                f"{sum(w.status == st for w in workers)} {st}"
                for st in RunStatus
                if any(w.status == st for w in workers)
            )
            last = next((w.message for w in reversed(ended) if w.message), None)
            group.tokens_in, group.tokens_out, group.cost = _spent(s, group_id)
            group.status, group.finished_at = status, utcnow()
            group.message = f"{len(workers)} workers ({tally})" + (f"; {last}" if last else "")
            return str(status)

    def group_spent(self, group_id: int) -> tuple[int, int, float]:
        """(tokens in, tokens out, cost) of every LLM call a group's workers made so far."""
        with self.session() as s:
            return _spent(s, group_id)

    def book_budget(self, group_id: int, run_id: int, tokens: int, cost: float) -> bool:
        """Book a call's worst case in its group's budget before the call starts.

        False (nothing booked) when what the group spent, what its running workers have in
        flight and this call could pass the budget. The group's row is locked meanwhile,
        so workers on other machines cannot overbook it together.
        """
        with self.serialized(run_id=group_id) as s:
            group = s.get(Run, group_id)
            if group is None:
                raise NotFoundError(f"no run group with id {group_id}")
            tokens_held, cost_held = s.execute(
                select(
                    func.coalesce(func.sum(Run.reserved_tokens), 0),
                    func.coalesce(func.sum(Run.reserved_cost), 0.0),
                ).where(Run.parent_id == group_id, Run.status == RunStatus.RUNNING)
            ).one()
            spent = group.tokens_in + group.tokens_out
            if (
                group.max_tokens is not None and spent + tokens_held + tokens > group.max_tokens
            ) or (group.max_cost is not None and group.cost + cost_held + cost > group.max_cost):
                return False
            _add_booking(s, run_id, tokens, cost)
            return True

    def settle_budget(
        self,
        group_id: int,
        run_id: int,
        booked: tuple[int, float],
        tokens_in: int,
        tokens_out: int,
        cost: float,
    ) -> None:
        """A booked call ended: the group is charged what it spent, the booking is returned."""
        with self.serialized(run_id=group_id) as s:
            s.execute(
                update(Run)
                .where(Run.id == group_id)
                .values(
                    tokens_in=Run.tokens_in + tokens_in,
                    tokens_out=Run.tokens_out + tokens_out,
                    cost=Run.cost + cost,
                )
            )
            _add_booking(s, run_id, -booked[0], -booked[1])

    def worker_output(self, run_ids: list[int]) -> dict[int, dict[str, int]]:
        """What each worker run has committed so far: features mined (by its mine runs),
        model labels and scores written."""
        out = {i: {"mined": 0, "labels": 0, "scores": 0} for i in run_ids}
        if not run_ids:
            return out
        with self.session() as s:
            mined = s.execute(
                select(Run.parent_id, func.count(Feature.id))
                .join(Feature, Feature.mine_run_id == Run.id)
                .where(Run.parent_id.in_(run_ids))
                .group_by(Run.parent_id)
            )
            labels = s.execute(
                select(Explanation.run_id, func.count())
                .where(Explanation.run_id.in_(run_ids), Explanation.author_kind == "model")
                .group_by(Explanation.run_id)
            )
            scores = [
                s.execute(
                    select(table.run_id, func.count())
                    .where(table.run_id.in_(run_ids))
                    .group_by(table.run_id)
                )
                for table in (Score, FeatureScore)
            ]
            for key, rows in (("mined", [mined]), ("labels", [labels]), ("scores", scores)):
                for result in rows:
                    for run_id, n in result:
                        if run_id is not None:
                            out[run_id][key] += n
        return out

    # ------------------------------------------------------------ locks

    def acquire_lock(
        self, name: str, holder: str, *, run_id: int | None = None, stale_after_s: float = 600
    ) -> None:
        """Take a named lock, or raise LockedError naming who holds it.

        A lock whose heartbeat is older than `stale_after_s` is taken over.
        """
        now = utcnow()
        with self.session() as s:
            s.execute(
                delete(Lock).where(
                    Lock.name == name, Lock.heartbeat_at < now - timedelta(seconds=stale_after_s)
                )
            )
        try:
            with self.session() as s:
                s.add(
                    Lock(name=name, holder=holder, run_id=run_id, acquired_at=now, heartbeat_at=now)
                )
        except IntegrityError:
            with self.session() as s:
                lock = s.get(Lock, name)
            if lock is None:
                return self.acquire_lock(name, holder, run_id=run_id, stale_after_s=stale_after_s)
            raise LockedError(
                f"another gloss run holds the {name!r} lock ({lock.holder}, run {lock.run_id}, "
                f"since {lock.acquired_at:%Y-%m-%d %H:%M:%S} UTC); wait for it, or if it died, "
                f"the lock expires {stale_after_s:.0f}s after its last heartbeat"
            ) from None

    def lock(self, name: str) -> LockInfo | None:
        with self.session() as s:
            lock = s.get(Lock, name)
            if lock is None:
                return None
            return LockInfo(
                lock.name, lock.holder, lock.run_id, lock.acquired_at, lock.heartbeat_at
            )

    def set_lock_run(self, name: str, holder: str, run_id: int) -> None:
        with self.session() as s:
            s.execute(
                update(Lock).where(Lock.name == name, Lock.holder == holder).values(run_id=run_id)
            )

    def release_lock(self, name: str, holder: str) -> None:
        with self.session() as s:
            s.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder))

    # ------------------------------------------------------------ claims

    def claim(
        self,
        feature_id: int,
        stage: str,
        holder: str,
        *,
        run_id: int | None = None,
        lease_s: float = 300.0,
    ) -> bool:
        """Claim a feature for a stage before paying for its LLM work.

        False when another holder's claim has not expired; the holder keeps it fresh
        with `heartbeat` and ends it with `release`.
        """
        now = utcnow()
        expires = now + timedelta(seconds=lease_s)
        with self.serialized(feature_id) as s:
            claim = s.get(Claim, (feature_id, stage))
            if claim is None:
                s.add(
                    Claim(
                        feature_id=feature_id,
                        stage=stage,
                        holder=holder,
                        run_id=run_id,
                        expires_at=expires,
                    )
                )
                return True
            if claim.holder != holder and claim.expires_at > now:
                return False
            claim.holder, claim.run_id, claim.expires_at = holder, run_id, expires
            return True

    def release(self, feature_id: int, stage: str, holder: str) -> None:
        with self.session() as s:
            s.execute(
                delete(Claim).where(
                    Claim.feature_id == feature_id, Claim.stage == stage, Claim.holder == holder
                )
            )

    def claim_holders(self) -> list[str]:
        """Everyone holding a feature claim or a mining unit."""
        with self.session() as s:
            return sorted(
                set(s.scalars(select(Claim.holder).distinct()))
                | set(s.scalars(select(MiningUnit.holder).distinct()))
            )

    def drop_claims(self, holder: str) -> int:
        """Release every claim and mining unit of a holder: a process known to be dead, or
        a stage that ended."""
        with self.session() as s:
            result = s.execute(delete(Claim).where(Claim.holder == holder))
            units = s.execute(delete(MiningUnit).where(MiningUnit.holder == holder))
            return sum(cast("CursorResult[Any]", r).rowcount for r in (result, units))

    def claim_unit(
        self,
        source_id: int,
        first: int,
        size: int,
        holder: str,
        *,
        run_id: int | None = None,
        lease_s: float = 300.0,
    ) -> bool:
        """Lease features `first` .. `first + size - 1` of a source for mining.

        False when a unit overlapping them is held by another holder whose lease has not
        expired; expired or own overlapping units are replaced.
        """
        now = utcnow()
        with self.serialized(source_id=source_id) as s:
            overlapping = s.scalars(
                select(MiningUnit).where(
                    MiningUnit.source_id == source_id,
                    MiningUnit.first < first + size,
                    MiningUnit.first + MiningUnit.size > first,
                )
            ).all()
            if any(u.holder != holder and u.expires_at > now for u in overlapping):
                return False
            for unit in overlapping:
                s.delete(unit)
            s.flush()
            s.add(MiningUnit(source_id=source_id, first=first, size=size, holder=holder,
                             run_id=run_id, expires_at=now + timedelta(seconds=lease_s)))  # fmt: skip
            return True

    # ------------------------------------------------------------ the LLM ledger

    def cached_llm_response(self, request_hash: str) -> dict[str, Any] | None:
        """The response of an earlier successful, cacheable call with this request hash."""
        with self.session() as s:
            return s.scalar(
                select(LLMCall.response)
                .where(
                    LLMCall.request_hash == request_hash,
                    LLMCall.outcome == "ok",
                    LLMCall.cacheable.is_(True),
                )
                .order_by(LLMCall.id.desc())
                .limit(1)
            )

    def record_llm_call(
        self,
        *,
        request_hash: str,
        role: str,
        model: str,
        outcome: str,
        endpoint: str = "",
        cacheable: bool = True,
        error: str | None = None,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost: float = 0.0,
        latency_s: float = 0.0,
        run_id: int | None = None,
    ) -> int:
        """Keep a call in the ledger whatever it answered: NUL characters and non-finite
        numbers (which PostgreSQL's text and JSON cannot hold) are stored as readable
        stand-ins, so a garbage answer is recorded instead of failing the write."""
        with self.session() as s:
            call = LLMCall(
                request_hash=request_hash,
                role=role,
                model=model,
                endpoint=endpoint,
                cacheable=cacheable,
                outcome=outcome,
                error=_storable(error),
                request=_storable(request),
                response=_storable(response),
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                cost=cost,
                latency_s=latency_s,
                run_id=run_id,
            )
            s.add(call)
            s.flush()
            return call.id


def _add_booking(s: Session, run_id: int, tokens: int, cost: float) -> None:
    s.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(
            reserved_tokens=Run.reserved_tokens + tokens, reserved_cost=Run.reserved_cost + cost
        )
    )


def _spent(s: Session, group_id: int) -> tuple[int, int, float]:
    """What the ledger says a group's workers spent: the group's totals whether or not it
    had a budget (a budget's bookings leave out a dead worker's last calls in flight)."""
    workers = select(Run.id).where(Run.parent_id == group_id)
    tokens_in, tokens_out, cost = s.execute(
        select(
            func.coalesce(func.sum(LLMCall.tokens_in), 0),
            func.coalesce(func.sum(LLMCall.tokens_out), 0),
            func.coalesce(func.sum(LLMCall.cost), 0.0),
        ).where(LLMCall.run_id.in_(workers))
    ).one()
    return int(tokens_in), int(tokens_out), float(cost)


def _storable(value: Any) -> Any:
    """`value` with NUL characters replaced (U+FFFD) and NaN/infinities as strings."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _run_info(r: Run) -> RunInfo:
    return RunInfo(
        id=r.id,
        kind=r.kind,
        status=r.status,
        config=dict(r.config or {}),
        counts=dict(r.counts or {}),
        failures=list(r.failures or []),
        tokens_in=r.tokens_in,
        tokens_out=r.tokens_out,
        cost=r.cost,
        code_version=r.code_version,
        message=r.message,
        started_at=r.started_at,
        finished_at=r.finished_at,
        parent_id=r.parent_id,
        holder=r.holder,
        heartbeat_at=r.heartbeat_at,
        device=r.device,
        max_tokens=r.max_tokens,
        max_cost=r.max_cost,
    )
