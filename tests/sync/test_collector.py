"""The garbage collector's first threshold while a run runs (exporter.sync.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.helpers import make_settings

from exporter.sandbox.server import Sandbox, SandboxRequest
from exporter.service import job
from exporter.sync.collector import RUN_THRESHOLD, fewer_collections


@pytest.fixture
def default_threshold() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_a_run_fetches_with_the_raised_threshold_and_restores_it(
    db_url: str, tmp_path: Path, default_threshold: tuple[int, int, int]
) -> None:
    during: list[tuple[int, int, int]] = []

    def hook(request: SandboxRequest) -> None:
        if request.route == "locks":
            during.append(gc.get_threshold())

    with Sandbox(seed=2, owners=3, locks_per_owner=4) as fake:
        fake.hooks.append(hook)
        result = job.run_once(make_settings(fake, db_url, tmp_path, workers=2))

    assert result.status == "succeeded" and result.counts.created == 12
    assert during and set(during) == {(RUN_THRESHOLD, 10, 10)}
    assert gc.get_threshold() == default_threshold


def test_overlapping_runs_restore_the_threshold_when_the_last_ends(
    default_threshold: tuple[int, int, int],
) -> None:
    first, second = fewer_collections(), fewer_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold() == (RUN_THRESHOLD, 10, 10)
    second.__exit__(None, None, None)
    assert gc.get_threshold() == default_threshold


def test_the_threshold_is_restored_when_the_block_raises(
    default_threshold: tuple[int, int, int],
) -> None:
    with pytest.raises(KeyError), fewer_collections():
        raise KeyError("x")
    assert gc.get_threshold() == default_threshold


@pytest.mark.parametrize(
    "chosen",
    [
        pytest.param((0, 10, 10), id="automatic collection off"),
        pytest.param((100_000, 20, 5), id="a higher threshold"),
    ],
)
def test_a_threshold_someone_chose_is_left_alone(
    default_threshold: tuple[int, int, int], chosen: tuple[int, int, int]
) -> None:
    gc.set_threshold(*chosen)
    with fewer_collections():
        assert gc.get_threshold() == chosen
    assert gc.get_threshold() == chosen


def test_a_threshold_changed_during_the_run_is_kept(
    default_threshold: tuple[int, int, int],
) -> None:
    with fewer_collections():
        gc.set_threshold(2_000, 10, 10)
    assert gc.get_threshold() == (2_000, 10, 10)
