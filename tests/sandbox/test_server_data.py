"""The sandbox's data: the same seed gives the same payloads, and each generation's changes."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from support.helpers import sandbox_owner_ids
from support.sandbox_http import GUID, api, get_token

from exporter.sandbox.server import CHANGE_KINDS, Sandbox

# -- data: determinism and generations -----------------------------------------------------------


def test_the_same_seed_gives_byte_identical_payloads(session: requests.Session) -> None:
    bodies = []
    for _ in range(2):
        with Sandbox(seed=42, owners=2, locks_per_owner=4) as fake:
            token = get_token(fake, session)
            owners = api(fake, session, "/Owners", token)
            locks = [
                api(fake, session, f"/Owners/{o['id']}/BoundLocks", token).content
                for o in owners.json()
            ]
            bodies.append((owners.content, locks))
    assert bodies[0] == bodies[1]
    assert Sandbox(seed=1).snapshot() == Sandbox(seed=1).snapshot()
    assert Sandbox(seed=1).snapshot() != Sandbox(seed=2).snapshot()


def test_advance_is_deterministic() -> None:
    first, second = Sandbox(seed=5), Sandbox(seed=5)
    for _ in range(6):
        assert first.advance(4) == second.advance(4)
        assert first.snapshot() == second.snapshot()
        assert first.owners_payload() == second.owners_payload()
    assert first.generation == 6
    assert Sandbox(seed=6).advance(4) != Sandbox(seed=5).advance(4)


def _state(fake: Sandbox, owners: list[str]) -> dict[str, Any]:
    visible = {owner["id"]: owner for owner in fake.owners_payload()}
    locks = {o: fake.locks_payload(o) for o in owners}
    by_id = {lock["id"]: lock for items in locks.values() for lock in items}
    return {"visible": visible, "locks": locks, "by_id": by_id}


def test_every_change_kind_does_what_it_says() -> None:
    fake = Sandbox(seed=11, owners=4, locks_per_owner=4)
    owners = sandbox_owner_ids(fake)
    seen: set[str] = set()
    for _ in range(200):
        before = _state(fake, owners)
        (change,) = fake.advance(1)
        after = _state(fake, owners)
        seen.add(change.kind)
        lock, was = after["by_id"].get(change.lock_id), before["by_id"].get(change.lock_id)
        owner_locks = after["locks"][change.owner_id]
        match change.kind:
            case "rename" | "description" | "active":
                field = {"rename": "title"}.get(change.kind, change.kind)
                assert lock[field] != was[field]
                assert {**lock, field: was[field]} == was
            case "rcl":
                assert lock["rclSerialNo"] == (was["rclSerialNo"] or 0) + 1
            case "health":
                assert lock == was  # only visible with expand=healthStatuses
            case "unbind":
                assert lock is None and was is not None
                assert len(after["by_id"]) == len(before["by_id"]) - 1
            case "bind":
                assert was is None and owner_locks[-1] == lock
                assert lock["physicalLockId"] not in {
                    other["physicalLockId"] for other in before["by_id"].values()
                }
            case "move":
                assert owner_locks[-1] == lock and lock["ownerAccountId"] == change.owner_id
                assert was["ownerAccountId"] != change.owner_id
                assert {**lock, "ownerAccountId": was["ownerAccountId"]} == was
            case "rebind":
                assert was is None and owner_locks[-1] == lock
                old_id = change.detail.split()[2]
                assert old_id not in after["by_id"]
                assert lock["physicalLockId"] == before["by_id"][old_id]["physicalLockId"]
                assert lock["bindDate"] > before["by_id"][old_id]["bindDate"]
            case "owner_lost":
                assert change.owner_id in before["visible"]
                assert change.owner_id not in after["visible"] and after["visible"]
            case "owner_regained":
                assert change.owner_id not in before["visible"]
                assert change.owner_id in after["visible"]
            case "owner_rename" | "owner_active":
                old = before["visible"].get(change.owner_id)
                new = after["visible"].get(change.owner_id)
                if old and new:  # a hidden owner changes unseen
                    key = "name" if change.kind == "owner_rename" else "active"
                    assert old[key] != new[key] and {**new, key: old[key]} == old
            case _:
                pytest.fail(f"unexpected change kind {change.kind}")
    assert seen == set(CHANGE_KINDS)


def test_a_single_owner_is_never_lost() -> None:
    fake = Sandbox(owners=1, locks_per_owner=2)
    for _ in range(30):
        fake.advance(3)
        assert fake.owners_payload()
    with pytest.raises(ValueError, match="at least one visible owner"):
        fake.hide_owner(sandbox_owner_ids(fake)[0])


def test_direct_mutations() -> None:
    fake = Sandbox(seed=9)
    first, second = sandbox_owner_ids(fake)[:2]
    ids = [lock["id"] for lock in fake.locks_payload(first)]

    fake.unbind(ids[1])  # later locks move up one place
    assert [lock["id"] for lock in fake.locks_payload(first)] == [ids[0], *ids[2:]]
    new = fake.bind_new(first)
    assert fake.locks_payload(first)[-1]["id"] == new and GUID.fullmatch(new)
    fake.rename(ids[0], "Front Door 1")
    fake.update_lock(ids[0], description="new text", active=False, rclSerialNo=42)
    lock = fake.locks_payload(first)[0]
    assert (lock["title"], lock["description"], lock["active"], lock["rclSerialNo"]) == (
        "Front Door 1", "new text", False, 42
    )  # fmt: skip
    with pytest.raises(ValueError, match="cannot set"):
        fake.update_lock(ids[0], colour="red")

    fake.move(ids[0], second)
    moved = fake.locks_payload(second)[-1]
    assert moved["id"] == ids[0] and moved["ownerAccountId"] == second

    physical = next(x for x in fake.locks_payload(first) if x["id"] == ids[2])["physicalLockId"]
    rebound = fake.rebind(ids[2], second)  # Tapkey's rebind: a new bound id, the same device
    assert rebound != ids[2] and ids[2] not in str(fake.snapshot())
    assert fake.locks_payload(second)[-1]["id"] == rebound
    assert fake.locks_payload(second)[-1]["physicalLockId"] == physical

    old = fake.locks_payload(first)[-1]
    fake.unbind(old["id"])
    assert fake.rebind(old, first) == old["id"]  # a payload comes back with the same id
    assert fake.locks_payload(first)[-1] == old
    with pytest.raises(ValueError, match="already bound"):
        fake.rebind(old, first)

    fake.update_owner(first, name="Head Office", active=False)
    assert fake.owners_payload()[0] == {"active": False, "id": first, "name": "Head Office"}
    with pytest.raises(KeyError):
        fake.unbind("no-such-lock")
