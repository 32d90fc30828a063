"""The settings schema: every section and key, its default, its checks and its one-line errors.

Values arrive already gathered from the file, the environment and the command line (see
`exporter.config.loader`); validation needs only `base_dirs` in its context, for relative paths.
Secrets are `SecretStr`, so they stay out of `repr` and logs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote_plus, urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from exporter.config import crontab
from exporter.config.proxies import check_proxy_url, display_proxy
from exporter.config.urls import is_loopback_host, sqlite_file
from exporter.errors import ConfigError

_NUM = r"(\d+(?:\.\d+)?)"
_DURATION_RE = re.compile(rf"(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?")
_UNIT_SECONDS = (86400.0, 3600.0, 60.0, 1.0)
_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb")
# mysqlclient is not a dependency; PyMySQL is (the `mysql` extra).
_PYMYSQL_DRIVERS = {"mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}
# The one driver the exporter ships for each database (SQLAlchemy's name, the package's name);
# a URL without a driver gets it (SQLAlchemy 2's default for postgresql:// is psycopg 3).
_DRIVERS = {
    "sqlite": ("pysqlite", "Python's sqlite3"),
    "postgresql": ("psycopg", "psycopg 3"),
    "mysql": ("pymysql", "PyMySQL"),
    "mariadb": ("pymysql", "PyMySQL"),
}


def parse_duration(text: str) -> float:
    """Return the seconds in a duration such as "30s", "15m", "2h", "1d" or "1h30m"."""
    cleaned = text.strip().lower()
    match = _DURATION_RE.fullmatch(cleaned)
    if not cleaned or match is None:
        raise ValueError(f"expected a duration such as 30s, 15m, 2h, 1d or 1h30m (got {text!r})")
    return sum(float(v) * unit for v, unit in zip(match.groups(), _UNIT_SECONDS, strict=True) if v)


#: What `[tapkey] entities` may name, in sync order (owner accounts are always read).
ENTITIES: tuple[str, ...] = ("locks", "contacts", "cards", "grants", "log_entries")
OWNERS_SCOPE = "read:owneraccounts"
#: The scope each entity's route needs (Tapkey's Management API).
ENTITY_SCOPES: dict[str, str] = {
    "locks": "read:core:entities",
    "contacts": "read:core:entities",
    "cards": "read:core:entities",
    "grants": "read:grants",
    "log_entries": "read:logs",
}


def scopes_for(entities: Iterable[str]) -> list[str]:
    """The scopes to request for `entities`: read:owneraccounts, then each route's scope once."""
    return list(dict.fromkeys([OWNERS_SCOPE, *(ENTITY_SCOPES[name] for name in entities)]))


def _check_entities(value: object) -> tuple[str, ...]:
    """`entities` from a TOML list or an environment string ("contacts,grants" or with spaces);
    locks are always synced, so they are added when left out; order and repeats do not matter."""
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of names such as ['locks', 'grants'] (got {value!r})")
    names = {v.strip().lower() for v in value}
    unknown = sorted(names - set(ENTITIES))
    if unknown:
        hint = "; owner accounts are always read, leave it out" if unknown == ["owners"] else ""
        raise ValueError(f"unknown entity {unknown[0]!r}: choose from {', '.join(ENTITIES)}{hint}")
    return tuple(name for name in ENTITIES if name in names or name == "locks")


def env_var_name(section: str, key: str) -> str:
    """Return the environment variable that overrides `[section] key`."""
    return f"EXPORTER_{section.upper()}__{key.upper()}"


# A query parameter of a database URL whose name says it holds a secret (libpq's password and
# sslpassword, PyMySQL's passwd, an ODBC PWD, a token or key of a driver or proxy, ...).
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)
_QUERY_VALUE = re.compile(r"(?<=[?&;])([^=&;#]+)=([^&;#]*)")


def masked_url(url: str | URL) -> str:
    """Return `url` with every credential it carries replaced by ***, for logs and messages.

    That is the password of its user info and any query parameter named like a secret
    (`?password=`, `sslpassword`, `api_key`, `token`, ...).
    """
    parsed: URL | None = url if isinstance(url, URL) else None
    if parsed is None:
        try:
            parsed = make_url(url)
        except Exception:
            parsed = None
    if parsed is not None and "@" not in (parsed.host or ""):
        text = parsed.render_as_string(hide_password=True)
    else:
        # Junk or an unescaped "@" in the password: mask everything up to the last "@".
        raw = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        text = re.sub(r"(://[^:/@?#]*):.*@", r"\1:***@", raw)
    return _QUERY_VALUE.sub(_mask_query_value, text)


def _mask_query_value(match: re.Match[str]) -> str:
    key = match.group(1)
    return f"{key}=***" if _SECRET_QUERY_KEY.search(unquote_plus(key)) else match.group()


def url_secrets(url: str | URL) -> list[str]:
    """The credentials `url` carries (its password, secret query values), as they may be quoted."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except Exception:
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if _SECRET_QUERY_KEY.search(key):
            found += [value] if isinstance(value, str) else list(value)
    # The raw URL may carry them percent-encoded; a driver message quotes them decoded. Shorter
    # ones would be replaced inside every word that happens to contain them.
    found += [quote(secret, safe="") for secret in found]
    return sorted({secret for secret in found if len(secret) >= 4}, key=len, reverse=True)


def without_secrets(text: str, url: str | URL) -> str:
    """`text` (a driver's error message, say) with any credential of `url` in it replaced by ***."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


class Conflict(ValueError):
    """A rule between several keys of one section; `keys` lets the error say where each was set."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


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


def _check_http_url(value: str) -> str:
    value = value.strip()
    parts = urlsplit(value)
    try:
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"has an invalid port (got {value!r})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL such as https://my.tapkey.com (got {value!r})")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
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


#: The largest [tapkey] page_size accepted.
MAX_PAGE_SIZE = 5000


class TapkeySettings(_Section):
    """[tapkey]: the OAuth client and how the Management API is called."""

    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    token_url: str = "https://login.tapkey.com/connect/token"
    api_base_url: str = "https://my.tapkey.com"
    # None: the scopes follow `entities` (scopes_for); a value set here is requested as it is.
    scopes: str | None = None
    entities: tuple[str, ...] = ("locks",)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    # $top per request. Tapkey documents no maximum; 5,000 locks are about 5 MB of JSON, and
    # larger pages save no request worth having (exporter.tapkey.paging steps down after a 400).
    page_size: int = Field(1000, ge=1, le=MAX_PAGE_SIZE)
    workers: int = Field(4, ge=1, le=32)
    max_retries: int = Field(5, ge=0, le=20)
    backoff_factor: float = Field(0.5, ge=0)
    max_retry_after: float = Field(60.0, ge=0)
    max_retry_time: float = Field(300.0, gt=0)
    ca_bundle: Path | None = None
    expand_health: bool = False
    proxy: str | None = None

    _blank = field_validator(
        "client_id",
        "client_secret",
        "client_secret_file",
        "ca_bundle",
        "proxy",
        "scopes",
        mode="before",
    )(_blank_to_none)

    @field_validator("entities", mode="before")
    @classmethod
    def _entities(cls, value: object) -> tuple[str, ...]:
        return _check_entities(value)

    @field_validator("client_id")
    @classmethod
    def _strip_client_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if len(value) > 255:  # sync_runs.client_id holds 255, like Tapkey's client ids with room
            raise ValueError(
                f"is {len(value)} characters long, at most 255 fit: set it to the OAuth client's "
                "id (not its secret or a key)"
            )
        return value

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

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        return None if value is None else check_proxy_url(value)

    @field_validator("scopes")
    @classmethod
    def _check_scopes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.split():
            raise ValueError("must name at least one scope, e.g. 'read:owneraccounts'")
        return " ".join(value.split())

    @model_validator(mode="after")
    def _one_secret_source(self) -> TapkeySettings:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise Conflict(
                "client_secret and client_secret_file are both set; keep only one (in the "
                "file, EXPORTER_TAPKEY__CLIENT_SECRET or EXPORTER_TAPKEY__CLIENT_SECRET_FILE)",
                "client_secret",
                "client_secret_file",
            )
        return self

    @property
    def scope_list(self) -> list[str]:
        """The requested scopes: `scopes` if set, else those `entities` need (scopes_for)."""
        return self.scopes.split() if self.scopes is not None else scopes_for(self.entities)

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

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            shown = display_proxy(value) if name == "proxy" and isinstance(value, str) else value
            yield name, shown


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
        _check_driver(changed)
        if backend == "sqlite" and (url.host or url.port or url.username or url.password):
            path = "/".join(part for part in (url.host, url.database) if part)
            raise ValueError(
                f"{masked_url(value)} names a host, not a file (two slashes): write "
                f"sqlite:///{path} for a relative path or sqlite:////{path} for an absolute one"
            )
        if backend in ("mysql", "mariadb") and not url.database:
            raise ValueError(
                f"{masked_url(value)} names no database: add it, e.g. "
                f"{backend}://user:password@{url.host or 'host'}/inventory"
            )
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
            raise Conflict(
                "schema_name is only supported with a postgresql:// url", "schema_name", "url"
            )
        return self

    @property
    def backend(self) -> str:
        """The database kind: sqlite, postgresql, mysql or mariadb."""
        return make_url(self.url).get_backend_name()

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "url" and isinstance(value, str) else value


def _check_driver(url: URL) -> None:
    """Only the drivers the exporter ships with: SQLite's own, psycopg 3 and PyMySQL."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    shipped, package = _DRIVERS[backend]
    if driver != shipped:
        raise ValueError(
            f"the {backend} driver {driver!r} is not supported: the exporter uses {package}; "
            f"write {backend}:// (or {backend}+{shipped}://)"
        )


def _resolve_sqlite(url: URL, base: Path | None) -> URL:
    database = sqlite_file(url)
    if database is None:
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

    def cron_trigger(self) -> crontab.CrontabTrigger | None:
        """An APScheduler trigger for `cron` in `timezone`, or None when `every` is used."""
        if self.cron is None:
            return None
        return crontab.CrontabTrigger(self.cron, self.tzinfo)


class SyncSettings(_Section):
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
        return _check_duration(value)

    @field_validator("health_retention", "run_retention", "log_retention", mode="before")
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

    @property
    def log_retention_seconds(self) -> float | None:
        """`log_retention` in seconds (None keeps every log entry)."""
        return None if self.log_retention is None else parse_duration(self.log_retention)

    @property
    def log_overlap_seconds(self) -> float:
        """`log_overlap` in seconds."""
        return parse_duration(self.log_overlap)


class PrivacySettings(_Section):
    """[privacy]: what is stored of personal data (contacts' identifiers: email addresses)."""

    contact_identifier: Literal["keep", "hash", "drop"] = "keep"
    # The HMAC-SHA256 key of `hash`: a secret of its own (never stored in the database), so
    # the hashes stay the same when the OAuth client secret is rotated.
    hash_key: SecretStr | None = None
    hash_key_file: Path | None = None

    _blank = field_validator("hash_key", "hash_key_file", mode="before")(_blank_to_none)

    @field_validator("contact_identifier", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("hash_key_file")
    @classmethod
    def _resolve_key_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve_path(value, info, "privacy.hash_key_file")

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
    """The whole configuration. Not user-settable: `source`, the file it was loaded from, and
    `proxy_env`, the standard proxy variables in the environment (`exporter.config.proxies`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tapkey: TapkeySettings = Field(default_factory=TapkeySettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    source: Path | None = None
    proxy_env: dict[str, str] = Field(default_factory=dict, repr=False)  # may hold credentials


SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}
