"""TLS to MariaDB/MySQL: the URL's `ssl_*` options turned into one SSLContext for PyMySQL.

Left to themselves, SQLAlchemy and PyMySQL (checked with SQLAlchemy 2.1, PyMySQL 1.2) split the
options between them: SQLAlchemy moves `ssl_ca`, `ssl_capath`, `ssl_cert`, `ssl_key`,
`ssl_cipher` and `ssl_check_hostname` into PyMySQL's `ssl` dict and passes every other option
on as a string. PyMySQL then builds a new dict from its own `ssl_*` arguments whenever
`ssl_verify_cert` or `ssl_verify_identity` is set, dropping the CA and the client certificate
(`?ssl_ca=ca.pem&ssl_verify_cert=true` verified against the system's CAs instead, without the
host name), and reads the strings by truth (`ssl_disabled=false` turned TLS off). Here every
option means what it says, or is refused.

Without any `ssl_*` option nothing changes: PyMySQL 1.2 uses TLS when the server offers it,
without verifying the server (older releases do not use TLS at all). It builds that context
anew for every connection, loading the system's CA certificates it then does not use: 27-60 ms
of CPU a connection, several times per run. `connect_sharing_default_tls` builds it once.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.errors import ConfigError

FILE_OPTIONS = ("ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_key_password", "ssl_cipher")
FLAG_OPTIONS = ("ssl_disabled", "ssl_verify_cert", "ssl_verify_identity", "ssl_check_hostname")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_HOW = "see docs/deployment.md, Database connections"


def is_tls_option(name: str) -> bool:
    """True for a URL query option about TLS (anything named ssl...)."""
    return name.lower().startswith("ssl")


def mysql_tls(query: Mapping[str, str | Sequence[str]]) -> dict[str, Any]:
    """PyMySQL's connect arguments for the URL's `ssl_*` options (empty without any).

    The server's certificate is verified when `ssl_verify_cert` or `ssl_verify_identity` is
    true, or a CA is given (`ssl_ca`, `ssl_capath`) and `ssl_verify_cert` is not false; its host
    name too when `ssl_verify_identity` is true, or a CA is given and neither it nor
    `ssl_check_hostname` is false. Any other option alone (a client certificate) requires TLS
    without verifying. ConfigError for an unknown option, a flag that is not a boolean, or
    options that contradict each other.
    """
    options = {name: _one(name, value) for name, value in query.items() if is_tls_option(name)}
    for name in options:
        if name not in FILE_OPTIONS and name not in FLAG_OPTIONS:
            raise ConfigError(
                f"[database] url: unknown TLS option {name} for MariaDB/MySQL (PyMySQL takes "
                f"{', '.join((*FILE_OPTIONS, *FLAG_OPTIONS))}); {_HOW}"
            )
    flags = {name: _flag(name, options.pop(name)) for name in FLAG_OPTIONS if name in options}
    if flags.pop("ssl_disabled", False):
        if options or any(flags.values()):
            raise ConfigError(
                f"[database] url: ssl_disabled=true contradicts {', '.join([*options, *flags])}"
            )
        return {"ssl_disabled": True}
    if not options and not flags:
        return {}
    return {"ssl": _context(options, flags)}


def _context(options: dict[str, str], flags: dict[str, bool]) -> ssl.SSLContext:
    has_ca = "ssl_ca" in options or "ssl_capath" in options
    verify_cert = flags.get("ssl_verify_cert")
    identity = flags.get("ssl_verify_identity")
    check_hostname = flags.get("ssl_check_hostname")
    if identity is not None and check_hostname is not None and identity != check_hostname:
        raise ConfigError("[database] url: ssl_verify_identity and ssl_check_hostname disagree")
    hostname = identity if identity is not None else check_hostname
    if hostname and verify_cert is False:
        raise ConfigError(
            "[database] url: checking the server's host name needs its certificate verified "
            "(ssl_verify_cert=false contradicts it)"
        )
    verify = bool(verify_cert or hostname or (has_ca and verify_cert is None))
    try:
        context = ssl.create_default_context(
            cafile=options.get("ssl_ca"), capath=options.get("ssl_capath")
        )
        # MySQL's own generated certificates fail the strict checks Python 3.13 turns on by
        # default (PyMySQL clears the flag for the same reason).
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
        context.check_hostname = bool(hostname or (has_ca and hostname is None and verify))
        context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if "ssl_cert" in options:
            context.load_cert_chain(
                options["ssl_cert"],
                keyfile=options.get("ssl_key"),
                password=options.get("ssl_key_password"),
            )
        elif "ssl_key" in options or "ssl_key_password" in options:
            raise ConfigError("[database] url: ssl_key needs ssl_cert (the client certificate)")
        if "ssl_cipher" in options:
            context.set_ciphers(options["ssl_cipher"])
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[database] url: cannot set up TLS: {exc}; {_HOW}") from None
    return context


def _one(name: str, value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"[database] url: {name} is given more than once")


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"[database] url: {name} must be true or false (got {value!r})")


def connect_sharing_default_tls(
    _dialect: Any, _record: Any, cargs: Sequence[Any], cparams: dict[str, Any]
) -> Any:
    """A `do_connect` listener: PyMySQL's connection with its default TLS context (TLS if the
    server offers it, unverified) built once per process instead of once per connection."""
    return _default_tls_connection()(*cargs, **cparams)


@functools.cache
def _default_tls_connection() -> type[Any]:
    # Imported here: PyMySQL is an optional extra. A PyMySQL that no longer builds its context
    # in `_create_ssl_ctx` only leaves the override unused.
    from pymysql.connections import Connection  # type: ignore[import-untyped]

    class SharedDefaultTLS(Connection):  # type: ignore[misc]
        _default: Any = None

        def _create_ssl_ctx(self, sslp: Any) -> Any:
            if sslp != {}:  # options given: PyMySQL's own handling, as before
                return super()._create_ssl_ctx(sslp)
            cls = type(self)
            if cls._default is None:  # two threads may both build one: either will do
                cls._default = super()._create_ssl_ctx(sslp)
            return cls._default

    return SharedDefaultTLS
