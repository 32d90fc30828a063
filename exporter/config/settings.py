"""The settings schema: every section and key, its default, its checks and its one-line errors.

[tapkey] and [database] are here, the other sections in exporter.config.sections, the checks
of single values in exporter.config.values.

Values arrive already gathered from the file, the environment and the command line (see
`exporter.config.loader`); validation needs only `base_dirs` in its context, for relative paths.
Secrets are `SecretStr`, so they stay out of `repr` and logs.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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

from exporter.config.proxies import check_proxy_url, display_proxy
from exporter.config.sections import (
    HttpSettings,
    LoggingSettings,
    PrivacySettings,
    ScheduleSettings,
    SyncSettings,
)
from exporter.config.urls import masked_url, sqlite_file
from exporter.config.values import (
    Conflict,
    Section,
    base_dir,
    blank_to_none,
    check_http_url,
    resolve_path,
)
from exporter.errors import ConfigError

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
    """`entities` from a TOML list or an environment string ("contacts,grants", with spaces, or
    the file's own list syntax); locks are always synced, so they are added when left out; order
    and repeats do not matter."""
    if isinstance(value, str):
        value = _env_list(value)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of names such as ['locks', 'grants'] (got {value!r})")
    names = {v.strip().lower() for v in value}
    unknown = sorted(names - set(ENTITIES))
    if unknown:
        hint = "; owner accounts are always read, leave it out" if unknown == ["owners"] else ""
        raise ValueError(f"unknown entity {unknown[0]!r}: choose from {', '.join(ENTITIES)}{hint}")
    return tuple(name for name in ENTITIES if name in names or name == "locks")


def _env_list(text: str) -> object:
    """An environment string as a list: `["locks", "grants"]` as in the file, else by commas."""
    if not text.lstrip().startswith("["):
        return text.replace(",", " ").split()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise ValueError(
            f"cannot read {text!r} as a list: write names separated by commas, such as "
            'locks,grants, or a list such as ["locks", "grants"]'
        ) from None


def env_var_name(section: str, key: str) -> str:
    """Return the environment variable that overrides `[section] key`."""
    return f"EXPORTER_{section.upper()}__{key.upper()}"


#: The largest [tapkey] page_size accepted.
MAX_PAGE_SIZE = 5000


class TapkeySettings(Section):
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
    )(blank_to_none)

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
        path = resolve_path(value, info, f"tapkey.{info.field_name}")
        # Only absolute paths can be checked without guessing the working directory.
        if info.field_name == "ca_bundle" and path and path.is_absolute() and not path.is_file():
            raise ValueError(f"CA bundle {path} does not exist or is not a file")
        return path

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        return check_http_url(value)

    @field_validator("api_base_url")
    @classmethod
    def _check_api_base_url(cls, value: str) -> str:
        return check_http_url(value).rstrip("/")

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


class DatabaseSettings(Section):
    """[database]: where the inventory is written."""

    url: str = "sqlite:///exporter.db"
    schema_name: str | None = None
    # At most a day: MariaDB's GET_LOCK returns NULL at once for a timeout it cannot hold (1e300),
    # so a run meeting another one gave up instead of waiting.
    lock_timeout: float = Field(0.0, ge=0, le=86400)

    _blank = field_validator("schema_name", mode="before")(blank_to_none)

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
            changed = _resolve_sqlite(changed, base_dir(info, "database.url"))
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
