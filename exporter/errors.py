"""The exporter's exception tree, grouped by how the caller recovers.

    ExporterError                  exit 1 unless a subclass says otherwise
    ├── BadInputError              exit 2  what the user gave cannot be acted upon
    │   ├── ConfigError                    bad or missing setting; fix the config
    │   ├── UsageError                     bad command-line input
    │   └── ClientMismatchError            database was filled by another OAuth client
    ├── TapkeyError                exit 1  talking to Tapkey failed
    │   ├── AuthError                      token endpoint refused or unreachable
    │   ├── ApiError                       an API call failed (status after retries)
    │   │   └── PermissionDeniedError      403: scope or co-admin rights missing
    │   ├── PayloadError                   a response that cannot be read
    │   └── PagingError                    server ignored $skip / list kept shifting
    ├── Interrupted                exit 1  the run was asked to stop (SIGTERM/SIGINT)
    ├── StoreError                 exit 5  the database cannot be used
    │   ├── DatabaseUnavailableError       cannot connect, the connection died, out of space
    │   ├── DatabasePermissionError        the database user may not read or write a table
    │   └── SchemaVersionError             schema not at the revision this code needs
    └── LockHeldError              exit 4  another run holds the database lock

Every message is one line that names the problem and the fix, and never contains a secret.
"""

from __future__ import annotations


class ExporterError(Exception):
    """Root of every error the exporter raises on purpose."""

    exit_code = 1


class BadInputError(ExporterError):
    """What the user gave (settings, arguments) cannot be acted upon; fixing it is the way on."""

    exit_code = 2


class ConfigError(BadInputError):
    """A setting is invalid or missing."""


class UsageError(BadInputError):
    """Command-line input that cannot be acted upon."""


class ClientMismatchError(BadInputError):
    """The configured OAuth client differs from the one that filled the database."""


class TapkeyError(ExporterError):
    """Talking to Tapkey (token endpoint or Management API) failed."""


class AuthError(TapkeyError):
    """No access token could be obtained."""


class ApiError(TapkeyError):
    """An API request failed; `status` is the last HTTP status, None for network errors."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PermissionDeniedError(ApiError):
    """403 from the API: a scope or a co-admin permission is missing."""


class PayloadError(TapkeyError):
    """A response body that cannot be read as the documented payload."""


class PagingError(TapkeyError):
    """Paging could not produce a consistent list (ignored $skip, list kept shifting)."""


class Interrupted(ExporterError):
    """The run was asked to stop (SIGTERM/SIGINT); it ends as failed/interrupted."""

    def __str__(self) -> str:
        return "interrupted"


class StoreError(ExporterError):
    """The database cannot be used."""

    exit_code = 5


class DatabaseUnavailableError(StoreError):
    """The database cannot be reached or the connection was lost."""


class DatabasePermissionError(StoreError):
    """The database user lacks a privilege (a read-only role, a read-only SQLite file)."""


class SchemaVersionError(StoreError):
    """The database schema is not at the revision this code expects."""


class LockHeldError(ExporterError):
    """Another run holds the database's writer lock."""

    exit_code = 4


def first_line(exc: BaseException) -> str:
    """The first line of an error's text, for a one-line message (its type name if it has none).

    A SQLAlchemy error's driver exception (`orig`) is read instead of the wrapper: the wrapper
    prefixes the driver's class name and appends the SQL, which belongs in no one-line message.
    """
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
