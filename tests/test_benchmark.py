"""The benchmarks still run end to end (tiny sizes: their figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alembic import command as alembic_command
from sqlalchemy import text

from exporter.db import migrate
from exporter.db.engine import make_engine

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Runs a benchmark script of benchmarks/ (its first argument) from the repository root."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_sync_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    result = _run(
        "sync_bench.py",
        *("--db", "sqlite", "--db-url", f"sqlite:///{tmp_path / 'bench.db'}"),
        *("--owners", "3", "--locks-per-owner", "7", "--changes", "4", "--repeat", "1"),
        *("--results", str(tmp_path / "results")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "store only (no HTTP)" in result.stdout and "first load" in result.stdout
    (report,) = (tmp_path / "results").glob("sync_sqlite_2*.json")
    data = json.loads(report.read_text())
    runs = data["runs"]
    assert len(runs["floor"]) == 6  # before and after each of the five other scenarios
    assert runs["store"][0]["locks"] == runs["first"][0]["created"] == 21
    assert runs["unchanged"][0]["unchanged"] == 21
    assert all(data["summary"][kind]["ratio"] > 0 for kind in ("store", "first", "unchanged"))


def test_sync_benchmark_shapes_compare_with_the_plain_crawler(tmp_path: Path) -> None:
    result = _run(
        "sync_bench.py",
        *("--db", "sqlite", "--db-url", f"sqlite:///{tmp_path / 'bench.db'}"),
        *("--shapes", "3x7@5", "--changes", "4", "--repeat", "1"),
        *("--results", str(tmp_path / "results")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3x7@5 unchanged" in result.stdout
    (report,) = (tmp_path / "results").glob("shapes_sqlite_2*.json")
    summary = json.loads(report.read_text())["summary"]
    # The plain crawler: token, one page of owners, one page per owner.
    assert {summary[f"3x7@5 {kind}"]["crawler_requests"] for kind in ("first", "unchanged")} == {5}
    # The exporter on an unchanged rerun: the same, and one request confirming a list's end.
    assert summary["3x7@5 unchanged"]["requests"] == 6
    # The first load's fetch alone (no database) sends exactly what the first load sends.
    assert summary["3x7@5 fetch"]["requests"] == summary["3x7@5 first"]["requests"] > 6
    assert "request_target" not in summary["3x7@5 fetch"]
    assert all(row["wall_s"] > 0 and row["crawler_s"] > 0 for row in summary.values())


def test_read_benchmark_runs_every_command(tmp_path: Path) -> None:
    result = _run(
        "read_bench.py",
        *("--db", "sqlite", "--db-url", f"sqlite:///{tmp_path / 'read.db'}"),
        *("--locks", "250", "--owners", "4", "--renames", "10", "--repeat", "1"),
        *("--results", str(tmp_path / "results")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "locks --as-of 1 csv" in result.stdout and "SQL floor --as-of 1" in result.stdout
    (report,) = (tmp_path / "results").glob("read_sqlite_2*.json")
    summary = json.loads(report.read_text())["summary"]
    assert summary["locks csv"]["lines"] == summary["locks --as-of 1 csv"]["lines"] == 251
    assert summary["SQL floor"]["lines"] == summary["SQL floor --as-of 1"]["lines"] == 250
    assert summary["locks csv"]["x_floor"] > 0
    assert all(row["rss_peak_mib"] > 0 and row["wall_s"] > 0 for row in summary.values())
    assert {"met"} <= set(summary["locks csv"])


def _kept_read_database(tmp_path: Path) -> tuple[str, list[str]]:
    """A database `read_bench.py --keep` built, and the command that reuses it."""
    url = f"sqlite:///{tmp_path / 'kept.db'}"
    command = [
        *(sys.executable, str(ROOT / "benchmarks" / "read_bench.py"), "--keep"),
        *("--db", "sqlite", "--db-url", url, "--results", str(tmp_path / "results")),
        *("--locks", "40", "--owners", "2", "--renames", "4"),
    ]
    built = subprocess.run(
        [*command, "--repeat", "0"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return url, [*command, "--repeat", "1", "--only", "locks csv"]


def test_read_benchmark_upgrades_a_kept_database_behind_the_code(tmp_path: Path) -> None:
    url, command = _kept_read_database(tmp_path)
    # As a checkout one migration older left it.
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            alembic_command.downgrade(migrate.alembic_config(conn), "-1")
            conn.commit()
        behind = migrate.current_revision(engine)
    finally:
        engine.dispose()
    assert behind != migrate.head_revision()

    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"upgraded from revision {behind} to {migrate.head_revision()}" in result.stdout
    assert "building" not in result.stdout  # the kept rows were reused


def test_read_benchmark_builds_again_a_kept_database_it_cannot_upgrade(tmp_path: Path) -> None:
    url, command = _kept_read_database(tmp_path)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:  # as a newer checkout left it
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_newer'"))
    finally:
        engine.dispose()

    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"building {url} again: its schema cannot be upgraded" in result.stdout
    assert "building 40 locks" in result.stdout


def test_access_benchmark_compares_an_unchanged_rerun_with_the_plain_crawler() -> None:
    result = _run(
        "access_bench.py",
        *("--db", "sqlite", "--owners", "4", "--locks-per-owner", "3", "--rounds", "1"),
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: the target was missed
    floor, unchanged = (
        line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith(("floor:", "unchanged:"))
    )
    # The same requests and one more, the check of one access list's end: only cost differs.
    assert int(unchanged) == int(floor) + 1
    assert "CPU (target <= 1.2)" in result.stdout
