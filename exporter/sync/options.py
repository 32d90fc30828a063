"""How a sync run behaves: one frozen value built once from settings (exporter.service.job)."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.sync.access import AccessOptions
from exporter.sync.batches import Batching
from exporter.sync.guard import RemovalGuard
from exporter.sync.log_entries import LogOptions


@dataclass(frozen=True)
class SyncOptions:
    """The settings of one run (exporter.sync.engine.sync).

    `workers` owners are fetched at a time. `dry_run` writes nothing and lists what would
    change. `allow_client_change` lets another OAuth client take over the database;
    `lock_timeout` is how long to wait for the writer lock (seconds; 0: fail at once).
    `guard` holds back mass removals. `health` asks for `expand=healthStatuses` and stores new
    readings (exporter.sync.health). `batching` bounds the transactions that group owners
    (exporter.sync.batches). `access` names the access entities synced after the locks
    (exporter.sync.access; the source must then also be an AccessSource). `logs` also reads
    every listed owner's new log entries once the locks are done (exporter.sync.log_entries; not
    in a dry run).
    """

    workers: int = 4
    dry_run: bool = False
    allow_client_change: bool = False
    lock_timeout: float = 0.0
    guard: RemovalGuard = field(default_factory=RemovalGuard)
    health: bool = False
    batching: Batching = field(default_factory=Batching)
    access: AccessOptions = field(default_factory=AccessOptions)
    logs: LogOptions | None = None
