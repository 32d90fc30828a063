"""The settings sections besides [tapkey] and [database]: [schedule], [sync], [privacy],
[logging] and [http] (exporter.config.settings puts them together).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from exporter.config.values import (
    Conflict,
    Section,
    blank_to_none,
    check_duration,
    parse_duration,
    resolve_path,
    split_listen,
)
from exporter.errors import ConfigError

if TYPE_CHECKING:
    from exporter.config.crontab import CrontabTrigger

__all__ = [
    "HttpSettings",
    "LoggingSettings",
    "PrivacySettings",
    "ScheduleSettings",
    "SyncSettings",
]


class ScheduleSettings(Section):
    """[schedule]: when `exporter serve` runs a sync. `every` and `cron` are exclusive."""

    every: str | None = None
    cron: str | None = None
    timezone: str = "UTC"
    run_on_start: bool = True
    jitter: float = Field(0.0, ge=0)
    misfire_grace_time: float = Field(300.0, gt=0)
    shutdown_timeout: float = Field(30.0, gt=0)

    _blank = field_validator("cron", mode="before")(blank_to_none)

    @model_validator(mode="before")
    @classmethod
    def _default_every(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        unset = blank_to_none(data.get("every")) is None and blank_to_none(data.get("cron")) is None
        return {**data, "every": "15m"} if unset else data

    @field_validator("every", mode="before")
    @classmethod
    def _check_every(cls, value: object) -> object:
        value = blank_to_none(value)
        return None if value is None else check_duration(value)

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from exporter.config import crontab  # APScheduler's: loaded only when cron is used

        value = " ".join(value.split())
        try:
            crontab.parse(value)
        except ValueError as exc:
            raise ValueError(f"invalid crontab expression {value!r}: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Vienna"
            ) from None
        return value

    @model_validator(mode="after")
    def _every_or_cron(self) -> ScheduleSettings:
        if self.every is not None and self.cron is not None:
            raise Conflict(
                "every and cron are both set; keep only one (an empty environment variable, "
                "e.g. EXPORTER_SCHEDULE__EVERY=, unsets a value from the file)",
                "every",
                "cron",
            )
        return self

    @property
    def interval_seconds(self) -> float | None:
        """Seconds between runs, or None when `cron` is used."""
        return None if self.every is None else parse_duration(self.every)

    @property
    def tzinfo(self) -> ZoneInfo:
        """The zone `cron` is read in."""
        return ZoneInfo(self.timezone)

    def cron_trigger(self) -> CrontabTrigger | None:
        """An APScheduler trigger for `cron` in `timezone`, or None when `every` is used."""
        if self.cron is None:
            return None
        from exporter.config.crontab import CrontabTrigger

        return CrontabTrigger(self.cron, self.tzinfo)


class SyncSettings(Section):
    """[sync]: safety rails of the sync engine."""

    allow_client_id_change: bool = False
    mass_removal_max_fraction: float = Field(0.5, ge=0, le=1)
    mass_removal_min_count: int = Field(10, ge=0)
    allow_mass_removal: bool = False
    health_retention: str | None = None
    run_retention: str | None = None
    log_retention: str | None = None
    log_overlap: str = "10m"

    @field_validator("log_overlap", mode="before")
    @classmethod
    def _check_overlap(cls, value: object) -> str:
        return check_duration(value)

    @field_validator("health_retention", "run_retention", "log_retention", mode="before")
    @classmethod
    def _check_retention(cls, value: object) -> object:
        value = blank_to_none(value)
        return None if value is None else check_duration(value)

    @property
    def health_retention_seconds(self) -> float | None:
        """`health_retention` in seconds (None keeps every reading)."""
        return None if self.health_retention is None else parse_duration(self.health_retention)

    @property
    def run_retention_seconds(self) -> float | None:
        """`run_retention` in seconds (None keeps every run record)."""
        return None if self.run_retention is None else parse_duration(self.run_retention)

    @property
    def log_retention_seconds(self) -> float | None:
        """`log_retention` in seconds (None keeps every log entry)."""
        return None if self.log_retention is None else parse_duration(self.log_retention)

    @property
    def log_overlap_seconds(self) -> float:
        """`log_overlap` in seconds."""
        return parse_duration(self.log_overlap)


class PrivacySettings(Section):
    """[privacy]: what is stored of personal data (contacts' identifiers: email addresses)."""

    contact_identifier: Literal["keep", "hash", "drop"] = "keep"
    # The HMAC-SHA256 key of `hash`: a secret of its own (never stored in the database), so
    # the hashes stay the same when the OAuth client secret is rotated.
    hash_key: SecretStr | None = None
    hash_key_file: Path | None = None

    _blank = field_validator("hash_key", "hash_key_file", mode="before")(blank_to_none)

    @field_validator("contact_identifier", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("hash_key_file")
    @classmethod
    def _resolve_key_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolve_path(value, info, "privacy.hash_key_file")

    @model_validator(mode="after")
    def _key_for_hash(self) -> PrivacySettings:
        if self.hash_key is not None and self.hash_key_file is not None:
            raise Conflict(
                "hash_key and hash_key_file are both set; keep only one",
                "hash_key",
                "hash_key_file",
            )
        if (
            self.contact_identifier == "hash"
            and self.hash_key is None
            and self.hash_key_file is None
        ):
            raise Conflict(
                'contact_identifier = "hash" needs a key: set hash_key_file (a file holding a '
                "long random secret, e.g. from `openssl rand -hex 32`) or hash_key",
                "contact_identifier",
            )
        return self

    def key(self) -> bytes | None:
        """The HMAC key of `hash` (read from `hash_key_file` when set); None for keep and drop."""
        if self.contact_identifier != "hash":
            return None
        if self.hash_key is not None:
            secret = self.hash_key.get_secret_value()
        else:
            assert self.hash_key_file is not None  # _key_for_hash
            path = self.hash_key_file
            try:
                secret = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise ConfigError(
                    f"cannot read [privacy] hash_key_file {path}: {reason}; check the path and "
                    "that this user may read it"
                ) from None
        if len(secret) < 16:
            raise ConfigError(
                "[privacy] hash key is shorter than 16 characters; use a long random secret, "
                "e.g. from `openssl rand -hex 32`"
            )
        return secret.encode()


class LoggingSettings(Section):
    """[logging]: log level and line format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class HttpSettings(Section):
    """[http]: the optional /healthz and /metrics endpoint of `exporter serve`."""

    enabled: bool = False
    listen: str = "127.0.0.1:9464"
    healthz_max_age: str = "1h"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value.strip()

    @field_validator("healthz_max_age", mode="before")
    @classmethod
    def _check_max_age(cls, value: object) -> str:
        return check_duration(value)

    @property
    def host(self) -> str:
        """The host part of `listen` (without IPv6 brackets)."""
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of `listen` (0 lets the system pick one)."""
        return split_listen(self.listen)[1]

    @property
    def healthz_max_age_seconds(self) -> float:
        """`healthz_max_age` in seconds."""
        return parse_duration(self.healthz_max_age)
