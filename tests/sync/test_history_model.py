"""A model of the history, checked after every run of a seeded random sequence of runs.

Each step changes the sandbox (its random generations, plus unbinds and restores of the same
bound lock id); the server may start, keep or stop capping `$top` silently or refusing a large
one; and the run may meet faults (5xx and 429 bursts, an owner that keeps failing or is refused,
the token expiring mid-run, the run stopped half-way, lists changing while they are read), with
a random page size and worker count. After each run (`_check_run`), for the instant it finished:

- every lock a complete fetch listed is stored as listed (in either view, if the lists changed
  during the run), unless its list's end was not proven or not confirmed;
- every other lock is as it was: no version is invented for an owner the run did not read;
- a lock is removed only when its owner was read completely or vanished (with that reason),
  never by a failed run or one with an unproven list end;
- a successful run stores exactly the API's state, owners included;
- the history is consistent and the run's counts are the version rows it wrote.

At the end every earlier instant must still read as it did right after its run.

Set EXPORTER_HISTORY_SEEDS (e.g. "1-200" or "5,9") to hunt with other seeds.
"""

from __future__ import annotations

import functools
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from support.helpers import run_once
from support.history import (
    assert_counts_match_versions,
    assert_history_consistent,
    expected_locks,
    locks_at,
    rows_at,
)

from exporter.db.schema import bound_lock_versions, sync_run_owners
from exporter.results import RunResult
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest

STEPS = 10


def _seeds() -> list[int]:
    spec = os.environ.get("EXPORTER_HISTORY_SEEDS", "1,2,3")
    seeds: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


@dataclass
class Step:
    """One run's conditions: what is injected, and how the exporter is configured."""

    tapkey: dict[str, Any]
    faults: list[Fault] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    expire_token_at: int | None = None  # the locks request after which every token expired
    stop_at: int | None = None  # the locks request after which the run is told to stop
    change_at: int | None = None  # the locks request before which the lists change
    notes: list[str] = field(default_factory=list)


def _change_sandbox(fake: Sandbox, rng: random.Random, unbound: list[dict[str, Any]]) -> str:
    """Random generations, unbinds and restores of the same id; says what it did."""
    done: list[str] = []
    if rng.random() < 0.7:
        done.extend(c.kind for c in fake.advance(changes=rng.randint(1, 6)))
    snapshot = fake.snapshot()
    locks = [lock for items in snapshot.values() for lock in items]
    if locks and rng.random() < 0.3:
        lock = rng.choice(locks)
        fake.unbind(lock["id"])
        unbound.append(lock)
        done.append("unbind")
    if unbound and rng.random() < 0.3:
        lock = unbound.pop(rng.randrange(len(unbound)))
        fake.rebind(lock, rng.choice(list(snapshot)))
        done.append("restore")
    return ",".join(done)


def _change_during_run(fake: Sandbox, rng: random.Random) -> None:
    """Changes a crawl may meet half-way (no moves: a lock moving between two owners' reads
    is missed by both, which no reader of separate lists can tell from an unbind)."""
    for _ in range(rng.randint(1, 3)):
        snapshot = fake.snapshot()
        owner = rng.choice(list(snapshot))
        locks = [lock["id"] for lock in snapshot[owner]]
        kind = rng.choice(["rename", "description", "unbind", "bind"] if locks else ["bind"])
        if kind == "bind":
            fake.bind_new(owner)
        elif kind == "unbind":
            fake.unbind(rng.choice(locks))
        elif kind == "rename":
            fake.rename(rng.choice(locks), f"Renamed {rng.randrange(10**6)}")
        else:
            fake.update_lock(rng.choice(locks), description=f"Text {rng.randrange(10**6)}")


def _draw_step(rng: random.Random, owners: list[str]) -> Step:
    step = Step(
        tapkey={
            "page_size": rng.choice([2, 3, 4, 5, 7, 1000]),
            "workers": rng.choice([1, 2, 3]),
        }
    )
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        kind = rng.choice(["burst", "429", "owner", "denied", "token", "stop", "change"])
        owner = rng.choice(owners)
        step.notes.append(kind)
        if kind == "burst":
            route = rng.choice(["owners", "locks"])
            step.faults.append(
                Fault(route, status=rng.choice([500, 502, 503, 504]), times=rng.randint(1, 2))
            )
        elif kind == "429":
            step.faults.append(
                Fault("locks", status=429, headers={"Retry-After": "0"}, times=rng.randint(1, 2))
            )
        elif kind == "owner":
            step.faults.append(Fault("locks", status=503, owner_id=owner, times=None))
        elif kind == "denied":
            step.denied.append(owner)
        elif kind == "token":
            step.expire_token_at = rng.randint(1, 8)
        elif kind == "stop":
            step.stop_at = rng.randint(1, 10)
        else:
            step.change_at = rng.randint(1, 10)
    return step


def _draw_server(fake: Sandbox, rng: random.Random) -> None:
    """Now and then the server starts, changes or stops capping or refusing `$top`; the rest of
    the time it stays as it was (a cap is rarely gone by the next run)."""
    if rng.random() < 0.25:
        fake.max_top = rng.choice([None, None, 2, 3, 4, 5, 6, 8])
    if rng.random() < 0.15:
        fake.refuse_top = rng.choice([None, None, 2, 3, 4, 6])


def _run_step(
    fake: Sandbox,
    clock: list[float],
    step: Step,
    rng: random.Random,
    run: Callable[..., RunResult],
) -> RunResult:
    for fault in step.faults:
        fake.add_fault(fault)
    for owner in step.denied:
        fake.deny(owner, "locks")
    stop = threading.Event()

    def hook(request: SandboxRequest) -> None:
        if request.route != "locks":
            return
        if request.number == step.expire_token_at:
            clock[0] += 7200  # every token issued so far has now expired, server-side
        if request.number == step.stop_at:
            stop.set()
        if request.number == step.change_at:
            _change_during_run(fake, rng)

    fake.reset_counters()
    fake.hooks.append(hook)
    try:
        return run(stop=stop)
    finally:
        fake.hooks.remove(hook)
        fake.clear_faults()
        for owner in step.denied:
            fake.allow(owner, "locks")


def _owner_statuses(engine: Engine, run_id: int | None) -> dict[str, str]:
    query = select(sync_run_owners.c.owner_account_id, sync_run_owners.c.status).where(
        sync_run_owners.c.run_id == run_id
    )
    with engine.connect() as conn:
        return {owner: status for owner, status in conn.execute(query)}


def _removed_in(engine: Engine, run_id: int | None) -> dict[str, str]:
    v = bound_lock_versions.c
    query = select(v.id, v.removal_reason).where(v.run_id == run_id, v.change_type == "removed")
    with engine.connect() as conn:
        return {lock_id: reason for lock_id, reason in conn.execute(query)}


Locks = dict[str, dict[str, Any]]


def _check_run(
    engine: Engine,
    result: RunResult,
    before: Locks,
    views: tuple[Locks, ...],
    owners_api: dict[str, dict[str, Any]],
    owners_before: dict[str, dict[str, Any]],
    past_cap: set[str],
) -> Locks:
    """The model: what the database may say at the run's end; returns what it says.

    `views` are what the API showed as the run began and, if the lists changed during the
    run, as it ended: each owner was read in one of them. `past_cap`: the locks listed past a
    silent page cap, which a run may miss (see `_unconfirmed`).
    """
    assert result.finished_at is not None
    now = locks_at(engine, result.finished_at)
    assert locks_at(engine, result.started_at) == before, "changed before the run started"
    complete = {o for o, s in _owner_statuses(engine, result.run_id).items() if s == "complete"}
    vanished = set(owners_before) - set(owners_api)
    # A list whose end was not proven (a new cap) may have lost its tail: those locks keep
    # their stored state, and no lock at all is removed.
    unproven = "not proven" in (result.error or "")
    removed = _removed_in(engine, result.run_id)
    assert set(removed) == set(before) - set(now), "removals and the locks that went disagree"
    assert not (unproven and removed), "removed although a list's end was not proven"
    assert not (result.status == "failed" and removed), "a failed run removed locks"
    for lock_id in set(before) | set(now) | {i for view in views for i in view}:
        old = before.get(lock_id)
        # Listed by a complete fetch: stored as listed. Else kept as it was, or removed if its
        # owner was read completely or vanished.
        allowed: list[dict[str, Any] | None] = (
            [old] if _unconfirmed(result, lock_id, past_cap) else []
        )
        for view in views:
            listed = view.get(lock_id)
            if listed is not None and listed["owner_account_id"] in complete:
                allowed.append(listed)
                continue
            allowed.append(old)
            if old is not None and old["owner_account_id"] in complete | vanished:
                allowed.append(None)
        assert now.get(lock_id) in allowed, f"lock {lock_id}: {now.get(lock_id)} not in {allowed}"
    for lock_id, reason in removed.items():
        expected = "owner_removed" if before[lock_id]["owner_account_id"] in vanished else "unbound"
        assert reason == expected, (lock_id, reason)
    if result.status == "succeeded" and len(views) == 1 and not past_cap:
        assert now == views[0], "a successful run must store the API's state exactly"
        assert rows_at(engine, "owners", result.finished_at) == owners_api
    assert_history_consistent(engine)
    assert_counts_match_versions(engine, result.run_id)
    return now


def _unconfirmed(result: RunResult, lock_id: str, past_cap: set[str]) -> bool:
    """Whether a lock a complete fetch listed may still be as stored: its list's end was not
    proven, or not confirmed at all (a failed run stops before the confirmation), or it sits
    past a silent cap as long as another list that really ends there: the one check per run
    confirms only one such end (test_a_new_lock_behind_a_new_cap_as_long_as_another_list_is_not_
    missed in test_engine_paging.py, open)."""
    unproven = "not proven" in (result.error or "")
    return unproven or result.status == "failed" or lock_id in past_cap


def _past_cap(snapshot: dict[str, list[dict[str, Any]]], cap: int | None) -> set[str]:
    if cap is None:
        return set()
    return {lock["id"] for locks in snapshot.values() for lock in locks[cap:]}


def _owners_payload(fake: Sandbox) -> dict[str, dict[str, Any]]:
    return {o["id"]: {"name": o["name"], "active": o["active"]} for o in fake.owners_payload()}


def _model_run(db_url: str, engine: Engine, tmp_path: Path, seed: int) -> None:
    rng = random.Random(f"history-model:{seed}")
    clock = [1000.0]
    unbound: list[dict[str, Any]] = []
    owners, locks = rng.randint(3, 6), rng.randint(3, 8)
    with Sandbox(seed=seed, owners=owners, locks_per_owner=locks, clock=lambda: clock[0]) as fake:
        states: list[tuple[datetime, Locks]] = []
        before: Locks = {}
        owners_before: dict[str, dict[str, Any]] = {}
        for number in range(STEPS):
            changes = _change_sandbox(fake, rng, unbound) if number else "first load"
            if number:
                _draw_server(fake, rng)
            step = _draw_step(rng, list(_owners_payload(fake)))
            snapshot, owners_api = fake.snapshot(), _owners_payload(fake)
            api = expected_locks(snapshot)
            tapkey = {"max_retries": 2, "max_retry_after": 0.05, **step.tapkey}
            run = functools.partial(run_once, fake, db_url, tmp_path, tapkey=tapkey)
            result = _run_step(fake, clock, step, random.Random(f"{seed}:{number}"), run)
            later = fake.snapshot()
            after = expected_locks(later)
            views = (api,) if after == api else (api, after)
            past_cap = _past_cap(snapshot, fake.max_top) | _past_cap(later, fake.max_top)
            context = (
                f"seed {seed} step {number} ({changes}; {step}; max_top {fake.max_top}, "
                f"refuse_top {fake.refuse_top}): {result.status} {result.error}"
            )
            try:
                before = _check_run(
                    engine, result, before, views, owners_api, owners_before, past_cap
                )
            except AssertionError as exc:
                raise AssertionError(f"{context}: {exc}") from exc
            at = result.finished_at or result.started_at
            owners_before = rows_at(engine, "owners", at)
            states.append((at, before))
        for at, state in states:
            assert locks_at(engine, at) == state, f"seed {seed}: the history at {at} was rewritten"


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds())
def test_history_model_across_random_runs_and_faults(
    db_url: str, engine: Engine, tmp_path: Path, seed: int
) -> None:
    _model_run(db_url, engine, tmp_path, seed)
