"""One validated settings schema: a TOML file plus `EXPORTER_<SECTION>__<KEY>` overrides.

Precedence: command-line flag > environment variable > file > default. Nothing here reads
`os.environ` or the working directory on its own: callers pass `env` and `cwd`. Every problem
becomes one `ConfigError` line naming the key and the fix; secret values never appear in it.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import shlex
import stat
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from exporter.errors import ConfigError

DEFAULT_CONFIG_NAME = "config.toml"
CONFIG_ENV_VAR = "EXPORTER_CONFIG"

_SECRET_KEYS = frozenset({("tapkey", "client_secret")})
_URL_KEYS = frozenset({("database", "url")})
# Settings holding a path; a relative one is resolved at load time (see load_settings).
_PATH_KEYS = ("database.url", "tapkey.client_secret_file", "tapkey.ca_bundle")
_ENV_RE = re.compile(r"EXPORTER_(?P<section>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*)__(?P<key>\w+)")
_NUM = r"(\d+(?:\.\d+)?)"
_DURATION_RE = re.compile(rf"(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?")
_UNIT_SECONDS = (86400.0, 3600.0, 60.0, 1.0)
_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb")
# mysqlclient is not a dependency; PyMySQL is (the `mysql` extra).
_PYMYSQL_DRIVERS = {"mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


def parse_duration(text: str) -> float:
    """Return the seconds in a duration such as "30s", "15m", "2h", "1d" or "1h30m"."""
    cleaned = text.strip().lower()
    match = _DURATION_RE.fullmatch(cleaned)
    if not cleaned or match is None:
        raise ValueError(f"expected a duration such as 30s, 15m, 2h, 1d or 1h30m (got {text!r})")
    return sum(float(v) * unit for v, unit in zip(match.groups(), _UNIT_SECONDS, strict=True) if v)


def env_var_name(section: str, key: str) -> str:
    """Return the environment variable that overrides `[section] key`."""
    return f"EXPORTER_{section.upper()}__{key.upper()}"


def masked_url(url: str) -> str:
    """Return `url` with any password replaced by ***, for logs and messages."""
    try:
        parsed: URL | None = make_url(url)
    except Exception:
        parsed = None
    if parsed is not None and "@" not in (parsed.host or ""):
        return parsed.render_as_string(hide_password=True)
    # Junk or an unescaped "@" in the password: mask everything up to the last "@".
    return re.sub(r"(://[^:/@?#]*):.*@", r"\1:***@", url)


def _blank_to_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


def _base_dir(info: ValidationInfo, key: str) -> Path | None:
    context = info.context
    bases = context.get("base_dirs") if isinstance(context, Mapping) else None
    base = bases.get(key) if isinstance(bases, Mapping) else None
    return base if isinstance(base, Path) else None


def _resolve_path(value: Path | None, info: ValidationInfo, key: str) -> Path | None:
    base = _base_dir(info, key)
    if value is None or value.is_absolute() or base is None:
        return value
    return base / value


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http_url(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    try:
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"has an invalid port (got {value!r})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL such as https://my.tapkey.com (got {value!r})")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            "plain http is only allowed to a loopback host (127.0.0.1, ::1, localhost); "
            f"use https:// (got {value!r})"
        )
    return value


def _check_duration(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a duration string such as "30s" or "15m" (got {value!r})')
    if parse_duration(value) <= 0:
        raise ValueError(f"must be longer than zero (got {value!r})")
    return value.strip()


def _split_listen(value: str) -> tuple[str, int]:
    text = value.strip()
    problem = f"must be host:port such as 127.0.0.1:9464, 0.0.0.0:9464 or [::]:9464 (got {value!r})"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ok = bool(sep) and ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
    else:
        host, sep, port = text.rpartition(":")
        ok = bool(sep) and _HOSTNAME_RE.fullmatch(host) is not None
    if not ok or not port.isdigit() or int(port) > 65535:
        raise ValueError(problem)
    return host, int(port)


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


class TapkeySettings(_Section):
    """[tapkey]: the OAuth client and how the Management API is called."""

    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    token_url: str = "https://login.tapkey.com/connect/token"
    api_base_url: str = "https://my.tapkey.com"
    scopes: str = "read:owneraccounts read:core:entities"
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    page_size: int = Field(100, ge=1, le=1000)
    workers: int = Field(4, ge=1, le=32)
    max_retries: int = Field(5, ge=0, le=20)
    backoff_factor: float = Field(0.5, ge=0)
    max_retry_after: float = Field(60.0, ge=0)
    max_retry_time: float = Field(300.0, gt=0)
    ca_bundle: Path | None = None
    expand_health: bool = False

    _blank = field_validator(
        "client_id", "client_secret", "client_secret_file", "ca_bundle", mode="before"
    )(_blank_to_none)

    @field_validator("client_id")
    @classmethod
    def _strip_client_id(cls, value: str | None) -> str | None:
        return value.strip() if value is not None else None

    @field_validator("client_secret_file", "ca_bundle")
    @classmethod
    def _resolve_paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        path = _resolve_path(value, info, f"tapkey.{info.field_name}")
        # Only absolute paths can be checked without guessing the working directory.
        if info.field_name == "ca_bundle" and path and path.is_absolute() and not path.is_file():
            raise ValueError(f"CA bundle {path} does not exist or is not a file")
        return path

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("api_base_url")
    @classmethod
    def _check_api_base_url(cls, value: str) -> str:
        return _check_http_url(value).rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _check_scopes(cls, value: str) -> str:
        if not value.split():
            raise ValueError("must name at least one scope, e.g. 'read:owneraccounts'")
        return " ".join(value.split())

    @model_validator(mode="after")
    def _one_secret_source(self) -> TapkeySettings:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError(
                "client_secret and client_secret_file are both set; keep only one (in the "
                "file, EXPORTER_TAPKEY__CLIENT_SECRET or EXPORTER_TAPKEY__CLIENT_SECRET_FILE)"
            )
        return self

    @property
    def scope_list(self) -> list[str]:
        """The requested scopes as a list."""
        return self.scopes.split()

    def credentials(self) -> tuple[str, str]:
        """Return (client_id, client_secret), reading `client_secret_file` when that is set."""
        if not self.client_id:
            raise ConfigError(
                "missing [tapkey] client_id: set client_id in the [tapkey] section of the config "
                "file or the EXPORTER_TAPKEY__CLIENT_ID environment variable"
            )
        if self.client_secret is not None:
            return self.client_id, self.client_secret.get_secret_value()
        path = self.client_secret_file
        if path is None:
            raise ConfigError(
                "missing [tapkey] client secret: set client_secret_file (a file holding only the "
                "secret) or client_secret in the [tapkey] section, or the environment variable "
                "EXPORTER_TAPKEY__CLIENT_SECRET_FILE or EXPORTER_TAPKEY__CLIENT_SECRET"
            )
        reason = None
        try:
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        except UnicodeDecodeError:
            reason = "not UTF-8 text"
        if reason is not None:
            raise ConfigError(
                f"cannot read [tapkey] client_secret_file {path}: {reason}; "
                "check the path and that this user may read it"
            )
        if not secret.strip():
            raise ConfigError(
                f"[tapkey] client_secret_file {path} is empty; put the client secret in it"
            )
        return self.client_id, secret


class DatabaseSettings(_Section):
    """[database]: where the inventory is written."""

    url: str = "sqlite:///exporter.db"
    schema_name: str | None = None
    lock_timeout: float = Field(0.0, ge=0)

    _blank = field_validator("schema_name", mode="before")(_blank_to_none)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError(
                f"is not a database URL (got {masked_url(value)!r}); expected e.g. "
                "sqlite:///exporter.db, postgresql://user:pass@host/db or mysql://user:pass@host/db"
            ) from None
        backend = url.get_backend_name()
        if backend not in _BACKENDS:
            hint = "; write postgresql:// instead" if backend == "postgres" else ""
            raise ValueError(
                f"unsupported database {backend!r}: use sqlite, postgresql, mysql or mariadb{hint}"
            )
        if "@" in (url.host or ""):
            raise ValueError("has an unescaped '@' in the user or password; write it as %40")
        changed = url.set(drivername=_PYMYSQL_DRIVERS.get(url.drivername, url.drivername))
        if backend == "sqlite":
            changed = _resolve_sqlite(changed, _base_dir(info, "database.url"))
        return value if changed == url else changed.render_as_string(hide_password=False)

    @field_validator("schema_name")
    @classmethod
    def _check_schema_name(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER_RE.fullmatch(value):
            raise ValueError(f"must be a plain SQL identifier such as 'tapkey' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _schema_needs_postgresql(self) -> DatabaseSettings:
        if self.schema_name is not None and self.backend != "postgresql":
            raise ValueError("schema_name is only supported with a postgresql:// url")
        return self

    @property
    def backend(self) -> str:
        """The database kind: sqlite, postgresql, mysql or mariadb."""
        return make_url(self.url).get_backend_name()

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "url" and isinstance(value, str) else value


def _resolve_sqlite(url: URL, base: Path | None) -> URL:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return url
    path = Path(database)
    if path.is_absolute() or base is None:
        return url
    return url.set(database=str(base / path))


class ScheduleSettings(_Section):
    """[schedule]: when `exporter serve` runs a sync. `every` and `cron` are exclusive."""

    every: str | None = None
    cron: str | None = None
    timezone: str = "UTC"
    run_on_start: bool = True
    jitter: float = Field(0.0, ge=0)
    misfire_grace_time: float = Field(300.0, gt=0)
    shutdown_timeout: float = Field(30.0, gt=0)

    _blank = field_validator("cron", mode="before")(_blank_to_none)

    @model_validator(mode="before")
    @classmethod
    def _default_every(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        unset = (
            _blank_to_none(data.get("every")) is None and _blank_to_none(data.get("cron")) is None
        )
        return {**data, "every": "15m"} if unset else data

    @field_validator("every", mode="before")
    @classmethod
    def _check_every(cls, value: object) -> object:
        value = _blank_to_none(value)
        return None if value is None else _check_duration(value)

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        try:
            # An explicit zone: without one APScheduler would look up the host's zone.
            CronTrigger.from_crontab(value, timezone=UTC)
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
            raise ValueError(
                "every and cron are both set; keep only one (an empty environment variable, "
                "e.g. EXPORTER_SCHEDULE__EVERY=, unsets a value from the file)"
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

    def cron_trigger(self) -> CronTrigger | None:
        """An APScheduler trigger for `cron` in `timezone`, or None when `every` is used."""
        if self.cron is None:
            return None
        return CronTrigger.from_crontab(self.cron, timezone=self.tzinfo)


class SyncSettings(_Section):
    """[sync]: safety rails of the sync engine."""

    allow_client_id_change: bool = False
    mass_removal_max_fraction: float = Field(0.5, ge=0, le=1)
    mass_removal_min_count: int = Field(10, ge=0)
    allow_mass_removal: bool = False
    health_retention: str | None = None
    run_retention: str | None = None

    @field_validator("health_retention", "run_retention", mode="before")
    @classmethod
    def _check_retention(cls, value: object) -> object:
        value = _blank_to_none(value)
        return None if value is None else _check_duration(value)

    @property
    def health_retention_seconds(self) -> float | None:
        """`health_retention` in seconds (None keeps every reading)."""
        return None if self.health_retention is None else parse_duration(self.health_retention)

    @property
    def run_retention_seconds(self) -> float | None:
        """`run_retention` in seconds (None keeps every run record)."""
        return None if self.run_retention is None else parse_duration(self.run_retention)


class LoggingSettings(_Section):
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


class HttpSettings(_Section):
    """[http]: the optional /healthz and /metrics endpoint of `exporter serve`."""

    enabled: bool = False
    listen: str = "127.0.0.1:9464"
    healthz_max_age: str = "1h"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        _split_listen(value)
        return value.strip()

    @field_validator("healthz_max_age", mode="before")
    @classmethod
    def _check_max_age(cls, value: object) -> str:
        return _check_duration(value)

    @property
    def host(self) -> str:
        """The host part of `listen` (without IPv6 brackets)."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of `listen` (0 lets the system pick one)."""
        return _split_listen(self.listen)[1]

    @property
    def healthz_max_age_seconds(self) -> float:
        """`healthz_max_age` in seconds."""
        return parse_duration(self.healthz_max_age)


class Settings(BaseModel):
    """The whole configuration. `source` is the file it was loaded from (not user-settable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tapkey: TapkeySettings = Field(default_factory=TapkeySettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    source: Path | None = None


SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}


class _Origin(NamedTuple):
    kind: Literal["file", "env", "cli"]
    label: str


def resolve_config_path(explicit: Path | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """Pick the config file: --config, else $EXPORTER_CONFIG, else ./config.toml, else None."""
    if explicit is not None:
        return _existing_file(cwd / explicit, "--config")
    named = env.get(CONFIG_ENV_VAR, "").strip()
    if named:
        return _existing_file(cwd / named, CONFIG_ENV_VAR)
    default = cwd / DEFAULT_CONFIG_NAME
    return default if default.is_file() else None


def _existing_file(path: Path, via: str) -> Path:
    if path.is_file():
        return path
    problem = "is a directory" if path.is_dir() else "does not exist"
    raise ConfigError(f"config file {path} (from {via}) {problem}; check the path")


def load_settings(
    path: Path | None,
    *,
    env: Mapping[str, str],
    cwd: Path,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from `path` (optional), `EXPORTER_<SECTION>__<KEY>` and CLI overrides.

    `overrides` maps "section.key" to a command-line value; None values are skipped. A relative
    path (SQLite file, secret file, CA bundle) is resolved against the config file's folder (`cwd`
    without a file), except one given on the command line, which is relative to `cwd`.
    """
    if path is not None and not path.is_absolute():
        path = cwd / path
    data: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    origins: dict[tuple[str, str], _Origin] = {}
    if path is not None:
        for section, key, value in _file_values(path):
            data[section][key] = value
            origins[section, key] = _Origin("file", str(path))
    for name, section, key, value in _env_values(env):
        data[section][key] = value
        origins[section, key] = _Origin("env", name)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or key not in SECTIONS[section].model_fields:
            raise ConfigError(f"unknown setting {dotted!r} in command-line overrides")
        data[section][key] = value
        origins[section, key] = _Origin("cli", dotted)
    base = path.parent if path is not None else cwd
    from_cli = {f"{s}.{k}" for (s, k), origin in origins.items() if origin.kind == "cli"}
    base_dirs = {key: cwd if key in from_cli else base for key in _PATH_KEYS}
    try:
        settings = Settings.model_validate(
            {**data, "source": path}, context={"base_dirs": base_dirs}
        )
    except ValidationError as exc:
        message = _describe(exc, origins, path)
    else:
        return settings
    # Raised outside the except block so the ValidationError, which holds the raw input
    # (secrets included), is not chained to this exception.
    raise ConfigError(message)


def _file_values(path: Path) -> Iterator[tuple[str, str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for section, table in document.items():
        if not isinstance(table, dict):
            owners = [s for s, model in SECTIONS.items() if section in model.model_fields]
            hint = (
                f"it belongs under [{owners[0]}]"
                if owners
                else f"settings go in sections: {', '.join(f'[{s}]' for s in SECTIONS)}"
            )
            raise ConfigError(f"unknown key {section} at the top level of {path}; {hint}")
        if section not in SECTIONS:
            hint = _suggest(section, {s: f"[{s}]" for s in SECTIONS})
            raise ConfigError(f"unknown section [{section}] in {path}; {hint}")
        fields = SECTIONS[section].model_fields
        for key, value in table.items():
            if key not in fields:
                hint = _suggest(key, {k: k for k in fields})
                raise ConfigError(f"unknown key [{section}] {key} in {path}; {hint}")
            yield section, key, value


def _env_values(env: Mapping[str, str]) -> Iterator[tuple[str, str, str, str]]:
    for name, value in sorted(env.items()):
        match = _ENV_RE.fullmatch(name)
        if match is None:
            continue
        section, key = match["section"].lower(), match["key"].lower()
        if section not in SECTIONS:
            hint = _suggest(section, {s: env_var_name(s, key) for s in SECTIONS})
            raise ConfigError(
                f"unknown environment variable {name}: no [{section}] section; {hint}"
            )
        fields = SECTIONS[section].model_fields
        if key not in fields:
            hint = _suggest(key, {k: env_var_name(section, k) for k in fields})
            raise ConfigError(
                f"unknown environment variable {name}: [{section}] has no key {key}; {hint}"
            )
        yield name, section, key, value


def _suggest(word: str, choices: Mapping[str, str]) -> str:
    """A "did you mean" hint; `choices` maps each valid name to how it is shown."""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean {choices[close[0]]}?"
    return "valid choices: " + ", ".join(choices.values())


def _describe(
    exc: ValidationError, origins: Mapping[tuple[str, str], _Origin], path: Path | None
) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    section, key = loc[0], (loc[1] if len(loc) > 1 else None)
    where = f"[{section}] {key}" if key else f"[{section}]"
    problem = _problem(first, SECTIONS.get(section), key)
    if key and first["type"] != "value_error" and (section, key) not in _SECRET_KEYS:
        shown = first["input"]
        if (section, key) in _URL_KEYS and isinstance(shown, str):
            shown = masked_url(shown)
        problem += f" (got {_show(shown)})"
    origin = origins.get((section, key)) if key else None
    if origin is None:
        prefix = str(path) if path is not None else "configuration"
        fix = f"; set it in the config file or {env_var_name(section, key)}" if key else ""
    elif origin.kind == "file":
        prefix, fix = (
            origin.label,
            f"; fix the value in the file or set {env_var_name(section, key or '')}",
        )
    elif origin.kind == "env":
        prefix, fix = origin.label, "; fix the environment variable"
    else:
        prefix, fix = "command line", "; fix the command-line option"
    more = len({tuple(error["loc"]) for error in errors}) - 1
    return f"{prefix}: {where}: {problem}{fix}" + (f" (+{more} more)" if more else "")


def _problem(error: Mapping[str, Any], model: type[BaseModel] | None, key: str | None) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    bounded = kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
    if bounded and model is not None and key in model.model_fields:
        return _bounds(model.model_fields[key].metadata)
    simple = {
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "finite_number": "must be a finite number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "path_type": "must be a file path",
        "model_type": "must be a table of settings",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return f"must be {context['expected']}"
    if kind == "value_error":
        return str(context["error"])
    message = str(error["msg"])
    return message[:1].lower() + message[1:]


def _bounds(metadata: Iterable[Any]) -> str:
    low = high = None
    exclusive = False
    for item in metadata:
        if getattr(item, "ge", None) is not None:
            low = item.ge
        if getattr(item, "gt", None) is not None:
            low, exclusive = item.gt, True
        if getattr(item, "le", None) is not None:
            high = item.le
    if low is not None and high is not None and not exclusive:
        return f"must be between {_show(low)} and {_show(high)}"
    if low is not None:
        return (
            f"must be greater than {_show(low)}" if exclusive else f"must be at least {_show(low)}"
        )
    return f"must be at most {_show(high)}"


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def file_permissions_warning(settings: Settings) -> str | None:
    """Warn when a file holding a secret (config or secret file) is readable by group/others."""
    if sys.platform == "win32":
        return None
    warnings = []
    files = []
    if settings.source is not None and _holds_secret(settings.source):
        files.append(settings.source)
    if settings.tapkey.client_secret_file is not None:
        files.append(settings.tapkey.client_secret_file)
    for path in files:
        try:
            info = path.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        # Not a regular file (a folder given by mistake): its own error says so; chmod would not.
        if stat.S_ISREG(info.st_mode) and mode & 0o044:
            warnings.append(
                f"{path} holds a secret and is readable by other users (mode {mode:04o}); "
                f"run: chmod 600 {shlex.quote(str(path))}"
            )
    return "; ".join(warnings) or None


def _holds_secret(path: Path) -> bool:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    tapkey, database = document.get("tapkey"), document.get("database")
    secret = tapkey.get("client_secret") if isinstance(tapkey, dict) else None
    if isinstance(secret, str) and secret.strip():
        return True
    if isinstance(database, dict) and isinstance(database.get("url"), str):
        try:
            return bool(make_url(database["url"]).password)
        except (ArgumentError, ValueError):
            return False
    return False
