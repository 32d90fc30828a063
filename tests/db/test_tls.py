"""TLS to MariaDB/MySQL: what PyMySQL does with the `ssl_*` options of [database] url."""

from __future__ import annotations

import ssl
from typing import Any

import pymysql
import pytest
from sqlalchemy import event
from support.http_servers import Tls

from exporter.db.engine import make_engine
from exporter.db.tls import connect_sharing_default_tls, mysql_tls
from exporter.errors import ConfigError

URL = "mysql+pymysql://app:pw@db.example:3306/inventory"


class _Captured(Exception):
    pass


def _driver_connection(url: str) -> pymysql.Connection[Any]:
    """The PyMySQL connection the engine would open for `url`, built but not connected."""
    engine = make_engine(url)

    def capture(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        raise _Captured(params)

    # The engine's own listener connects, so a listener added after it would see nothing.
    if event.contains(engine, "do_connect", connect_sharing_default_tls):
        event.remove(engine, "do_connect", connect_sharing_default_tls)
    event.listen(engine, "do_connect", capture)
    with pytest.raises(_Captured) as caught:
        engine.connect()
    engine.dispose()
    return pymysql.Connection(defer_connect=True, **caught.value.args[0])


def _ca_subjects(context: ssl.SSLContext) -> list[Any]:
    return [cert["subject"] for cert in context.get_ca_certs()]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("?ssl_ca={ca}", id="ca"),
        pytest.param("?ssl_ca={ca}&ssl_verify_cert=true", id="ca-and-verify-cert"),
        pytest.param("?ssl_ca={ca}&ssl_verify_identity=true", id="ca-and-verify-identity"),
    ],
)
def test_a_given_ca_verifies_the_server_and_its_host_name(tls: Tls, query: str) -> None:
    # SQLAlchemy moves ssl_ca into PyMySQL's ssl dict, which PyMySQL rebuilt without it as soon
    # as ssl_verify_cert / ssl_verify_identity was set: the system's CAs, no host name check.
    conn = _driver_connection(URL + query.format(ca=tls.ca_file))

    assert conn._ssl_required  # no fallback to a plain connection
    assert conn.ctx.verify_mode == ssl.CERT_REQUIRED
    assert conn.ctx.check_hostname
    assert _ca_subjects(conn.ctx) == _ca_subjects(ssl.create_default_context(cafile=tls.ca_file))


def test_ssl_disabled_false_leaves_tls_on() -> None:
    # PyMySQL read the string "false" as true and turned TLS off altogether.
    conn = _driver_connection(URL + "?ssl_disabled=false")

    assert conn.ssl  # PyMySQL's default: TLS when the server offers it


def test_without_tls_options_the_driver_default_applies() -> None:
    assert mysql_tls({}) == {}
    assert mysql_tls({"charset": "utf8mb4"}) == {}


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_without_tls_options_connections_share_the_driver_default_context(db_url: str) -> None:
    # PyMySQL built its default context anew for every connection, loading the system's CA
    # certificates it does not use (CERT_NONE): 27-60 ms of CPU a connection.
    engine = make_engine(db_url)
    try:
        with engine.connect() as first, engine.connect() as second:
            one, other = (c.connection.dbapi_connection for c in (first, second))
            assert one is not other
            assert one.ctx is other.ctx
            # Still PyMySQL's default: TLS only if the server offers it, unverified.
            assert one.ssl and not one._ssl_required
            assert one.ctx.verify_mode == ssl.CERT_NONE
    finally:
        engine.dispose()


def _context(query: dict[str, str]) -> ssl.SSLContext:
    context = mysql_tls(query)["ssl"]
    assert isinstance(context, ssl.SSLContext)
    return context


@pytest.mark.parametrize(
    ("options", "verify", "hostname"),
    [
        pytest.param({"ssl_ca": "CA"}, True, True, id="ca"),
        pytest.param({"ssl_ca": "CA", "ssl_check_hostname": "false"}, True, False, id="ca-no-host"),
        pytest.param({"ssl_ca": "CA", "ssl_verify_identity": "no"}, True, False, id="ca-no-ident"),
        pytest.param({"ssl_ca": "CA", "ssl_verify_cert": "false"}, False, False, id="ca-no-verify"),
        pytest.param({"ssl_verify_cert": "true"}, True, False, id="system-cas"),
        pytest.param({"ssl_verify_identity": "TRUE"}, True, True, id="system-cas-and-host"),
        pytest.param({"ssl_verify_identity": "false"}, False, False, id="encrypted-only"),
        pytest.param({"ssl_verify_cert": "0"}, False, False, id="encrypted-only-0"),
    ],
)
def test_what_each_combination_verifies(
    tls: Tls, options: dict[str, str], verify: bool, hostname: bool
) -> None:
    query = {name: str(tls.ca_file) if value == "CA" else value for name, value in options.items()}
    context = _context(query)

    assert context.verify_mode == (ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
    assert context.check_hostname is hostname


def test_ssl_disabled_true_turns_tls_off() -> None:
    assert mysql_tls({"ssl_disabled": "1"}) == {"ssl_disabled": True}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"ssl_mode": "REQUIRED"}, "unknown TLS option ssl_mode", id="mysql-cli-name"),
        pytest.param({"sslmode": "verify-full"}, "unknown TLS option sslmode", id="libpq-name"),
        pytest.param({"ssl_verify_cert": "maybe"}, "must be true or false", id="not-a-flag"),
        pytest.param(
            {"ssl_disabled": "true", "ssl_ca": "CA"}, "contradicts ssl_ca", id="disabled-and-ca"
        ),
        pytest.param(
            {"ssl_verify_identity": "true", "ssl_verify_cert": "false"},
            "needs its certificate verified",
            id="identity-without-cert",
        ),
        pytest.param(
            {"ssl_verify_identity": "true", "ssl_check_hostname": "false"},
            "disagree",
            id="two-names-disagree",
        ),
        pytest.param({"ssl_key": "key.pem"}, "ssl_key needs ssl_cert", id="key-without-cert"),
        pytest.param({"ssl_ca": "/nonexistent/ca.pem"}, "cannot set up TLS", id="missing-ca"),
        pytest.param({"ssl_ca": ("a.pem", "b.pem")}, "more than once", id="repeated"),
    ],
)
def test_options_that_cannot_mean_one_thing_are_refused(
    tls: Tls, options: dict[str, Any], message: str
) -> None:
    query = {name: str(tls.ca_file) if value == "CA" else value for name, value in options.items()}
    with pytest.raises(ConfigError, match=message):
        mysql_tls(query)
