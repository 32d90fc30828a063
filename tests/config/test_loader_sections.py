"""Each config section's own values and rules.

[database] URLs, durations and [schedule], API URLs and the CA bundle, [http] listen, [tapkey]
entities and scopes, [privacy].
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.config_files import SECRET, config_error, load, write

from exporter.config.loader import load_settings
from exporter.config.settings import TapkeySettings, scopes_for
from exporter.config.values import parse_duration
from exporter.errors import ConfigError

# -- [database] ------------------------------------------------------------------------------------


def test_relative_sqlite_resolved_against_config_folder(cwd: Path, conf_dir: Path) -> None:
    config = write(conf_dir / "config.toml", '[database]\nurl = "sqlite:///data/inv.db"\n')
    settings = load_settings(config, env={}, cwd=cwd)
    assert settings.database.url == f"sqlite:///{conf_dir}/data/inv.db"
    # The default and an env value are resolved against the file's folder too.
    assert load_settings(write(conf_dir / "empty.toml", ""), env={}, cwd=cwd).database.url == (
        f"sqlite:///{conf_dir}/exporter.db"
    )
    from_env = load_settings(config, env={"EXPORTER_DATABASE__URL": "sqlite:///e.db"}, cwd=cwd)
    assert from_env.database.url == f"sqlite:///{conf_dir}/e.db"


def test_relative_sqlite_from_command_line_is_relative_to_cwd(cwd: Path, conf_dir: Path) -> None:
    config = write(conf_dir / "config.toml", "")
    settings = load_settings(
        config, env={}, cwd=cwd, overrides={"database.url": "sqlite:///flag.db"}
    )
    assert settings.database.url == f"sqlite:///{cwd}/flag.db"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sqlite://", id="memory-short"),
        pytest.param("sqlite:///:memory:", id="memory"),
        pytest.param("sqlite:////var/lib/exporter.db", id="absolute"),
        pytest.param("postgresql://u:p@db.example.com:5432/tapkey", id="postgresql"),
        pytest.param("mysql+pymysql://u:p@db/tapkey", id="explicit-driver"),
    ],
)
def test_database_url_left_alone(cwd: Path, url: str) -> None:
    assert load(cwd, EXPORTER_DATABASE__URL=url).database.url == url


@pytest.mark.parametrize(
    ("url", "expected", "backend"),
    [
        pytest.param("mysql://u:p@db/tapkey", "mysql+pymysql://u:p@db/tapkey", "mysql", id="mysql"),
        pytest.param(
            "mariadb://u:p%40ss@db/t", "mariadb+pymysql://u:p%40ss@db/t", "mariadb", id="mariadb"
        ),
    ],
)
def test_mysql_urls_use_pymysql(cwd: Path, url: str, expected: str, backend: str) -> None:
    database = load(cwd, EXPORTER_DATABASE__URL=url).database
    assert (database.url, database.backend) == (expected, backend)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("oracle://u:p@db/x", "unsupported database 'oracle'", id="oracle"),
        pytest.param("postgres://u:p@db/x", "write postgresql:// instead", id="postgres-alias"),
        pytest.param("not a url", "is not a database URL", id="junk"),
        pytest.param("postgresql://u:p@ss@db/x", "unescaped '@'", id="unescaped-at"),
    ],
)
def test_bad_database_url(cwd: Path, url: str, expected: str) -> None:
    message = config_error(cwd, EXPORTER_DATABASE__URL=url)
    assert expected in message
    assert ":p@" not in message


def test_schema_name_needs_postgresql(cwd: Path) -> None:
    assert "only supported with a postgresql" in config_error(
        cwd, "[database]\nschema_name = 'tapkey'\n"
    )
    settings = load(cwd, "[database]\nurl = 'postgresql://db/x'\nschema_name = 'tapkey'\n").database
    assert settings.schema_name == "tapkey"


@pytest.mark.parametrize("value", ["-1", "86401", "1e300"])
def test_lock_timeout_is_between_zero_and_a_day(cwd: Path, value: str) -> None:
    message = config_error(cwd, EXPORTER_DATABASE__LOCK_TIMEOUT=value)
    assert "lock_timeout" in message and "\n" not in message
    assert load(cwd, "[database]\nlock_timeout = 86400\n").database.lock_timeout == 86400


# -- durations and [schedule] ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("30s", 30, id="seconds"),
        pytest.param("15m", 900, id="minutes"),
        pytest.param("2h", 7200, id="hours"),
        pytest.param("1d", 86400, id="days"),
        pytest.param("1h30m", 5400, id="combined"),
        pytest.param(" 1D2H3M4S ", 93784, id="case-and-space"),
        pytest.param("1.5s", 1.5, id="fraction"),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "15 minutes", "1m1h", "-5s", "s", "1w"])
def test_parse_duration_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 30s"):
        parse_duration(text)


def test_every_and_cron_are_exclusive(cwd: Path) -> None:
    message = config_error(cwd, "[schedule]\nevery = '5m'\ncron = '0 * * * *'\n")
    assert message.startswith(
        f"{cwd / 'config.toml'}: [schedule]: every and cron are both set; keep only one"
    )
    # An empty variable unsets the file's `every`, so the environment can switch to cron.
    schedule = load(
        cwd,
        "[schedule]\nevery = '5m'\n",
        EXPORTER_SCHEDULE__EVERY="",
        EXPORTER_SCHEDULE__CRON="0 * * * *",
    ).schedule
    assert (schedule.every, schedule.cron) == (None, "0 * * * *")


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        pytest.param(
            None,
            {"EXPORTER_TAPKEY__CLIENT_SECRET": SECRET, "EXPORTER_TAPKEY__CLIENT_SECRET_FILE": "s"},
            "EXPORTER_TAPKEY__CLIENT_SECRET and EXPORTER_TAPKEY__CLIENT_SECRET_FILE: [tapkey]: "
            "client_secret and client_secret_file are both set",
            id="both-secrets-in-env",
        ),
        pytest.param(
            "[tapkey]\nclient_id = 'x'\n",
            {"EXPORTER_SCHEDULE__EVERY": "5m", "EXPORTER_SCHEDULE__CRON": "0 * * * *"},
            "EXPORTER_SCHEDULE__EVERY and EXPORTER_SCHEDULE__CRON: [schedule]: every and cron",
            id="schedule-in-env-beside-a-file",
        ),
        pytest.param(
            "[tapkey]\nclient_id = 'x'\n",
            {"EXPORTER_DATABASE__SCHEMA_NAME": "tapkey"},
            "EXPORTER_DATABASE__SCHEMA_NAME: [database]: schema_name is only supported with a "
            "postgresql:// url; fix the environment variable",
            id="schema-in-env",
        ),
        pytest.param(
            "[schedule]\nevery = '5m'\n",
            {"EXPORTER_SCHEDULE__CRON": "0 * * * *"},
            "config.toml and EXPORTER_SCHEDULE__CRON: [schedule]: every and cron are both set",
            id="file-and-env",
        ),
    ],
)
def test_a_rule_between_keys_names_where_they_were_set(
    cwd: Path, text: str | None, env: dict[str, str], expected: str
) -> None:
    message = config_error(cwd, text, **env)
    assert expected in message
    assert message.startswith("EXPORTER_") or message.startswith(f"{cwd / 'config.toml'} and ")
    assert SECRET not in message


def test_cron_alone(cwd: Path) -> None:
    schedule = load(cwd, "[schedule]\ncron = '*/5  * * * *'\ntimezone = 'Europe/Vienna'\n").schedule
    assert (schedule.every, schedule.cron, schedule.interval_seconds) == (None, "*/5 * * * *", None)
    trigger = schedule.cron_trigger()
    assert trigger is not None
    assert str(trigger.timezone) == "Europe/Vienna"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("cron = '* * * *'", "has 4 fields, crontab(5) has 5", id="fields"),
        pytest.param("cron = '61 * * * *'", "invalid crontab expression '61 * * * *'", id="range"),
        pytest.param("timezone = 'Mars/Olympus'", "unknown time zone 'Mars/Olympus'", id="tz"),
        pytest.param("every = 30", 'expected a duration string such as "30s"', id="number"),
        pytest.param("every = '0s'", "must be longer than zero", id="zero"),
    ],
)
def test_bad_schedule(cwd: Path, text: str, expected: str) -> None:
    message = config_error(cwd, f"[schedule]\n{text}\n")
    assert "[schedule]" in message
    assert expected in message


# -- [tapkey] URLs and CA bundle, [http] listen ----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:8000", id="ipv4-loopback"),
        pytest.param("http://127.5.6.7", id="loopback-net"),
        pytest.param("http://[::1]:8000", id="ipv6-loopback"),
        pytest.param("http://localhost:8000", id="localhost"),
        # The same loopback rule as the Tapkey client's (config/urls.py), which allowed these:
        pytest.param("http://sandbox.localhost:8000", id="dot-localhost"),
        pytest.param("http://[::ffff:127.0.0.1]:8000", id="ipv4-mapped-loopback"),
        pytest.param("https://tapkey.example.com", id="https"),
    ],
)
def test_http_allowed(url: str) -> None:
    assert TapkeySettings(token_url=url, api_base_url=url).token_url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://my.tapkey.com", "use https://", id="plain-http"),
        pytest.param("http://10.0.0.1", "use https://", id="private-ip"),
        pytest.param("http://[::ffff:10.0.0.1]", "use https://", id="ipv4-mapped-private"),
        pytest.param("ftp://my.tapkey.com", "must be an http(s) URL", id="scheme"),
        pytest.param("my.tapkey.com", "must be an http(s) URL", id="no-scheme"),
    ],
)
def test_insecure_or_bad_api_url_rejected(cwd: Path, url: str, expected: str) -> None:
    message = config_error(cwd, EXPORTER_TAPKEY__API_BASE_URL=url)
    assert message.startswith("EXPORTER_TAPKEY__API_BASE_URL: [tapkey] api_base_url:")
    assert expected in message


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "exporter-0.svc:80", "[::1]:0"])
def test_listen_accepted(cwd: Path, listen: str) -> None:
    assert load(cwd, EXPORTER_HTTP__LISTEN=listen).http.listen == listen


@pytest.mark.parametrize("listen", ["9464", "::1:9464", "[nothost]:9464", "h:99999", "h:", ":80"])
def test_listen_rejected(cwd: Path, listen: str) -> None:
    assert "must be host:port" in config_error(cwd, EXPORTER_HTTP__LISTEN=listen)


def test_ca_bundle_resolved_and_checked(cwd: Path, conf_dir: Path) -> None:
    write(conf_dir / "ca.pem", "-----BEGIN CERTIFICATE-----\n")
    config = write(conf_dir / "config.toml", "[tapkey]\nca_bundle = 'ca.pem'\n")
    assert load_settings(config, env={}, cwd=cwd).tapkey.ca_bundle == conf_dir / "ca.pem"
    assert "CA bundle" in config_error(cwd, "[tapkey]\nca_bundle = 'missing.pem'\n")


# -- [tapkey] entities and scopes, [privacy] ------------------------------------------------------


def test_entities_default_to_locks_and_the_scopes_follow_them(cwd: Path) -> None:
    assert load(cwd).tapkey.entities == ("locks",)
    settings = load(cwd, "[tapkey]\nentities = ['grants', 'contacts', 'log_entries']\n")
    # Locks are always synced; the order is the sync order whatever the file says.
    assert settings.tapkey.entities == ("locks", "contacts", "grants", "log_entries")
    assert settings.tapkey.scope_list == [
        "read:owneraccounts",
        "read:core:entities",
        "read:grants",
        "read:logs",
    ]
    from_env = load(cwd, EXPORTER_TAPKEY__ENTITIES="cards, grants")
    assert from_env.tapkey.entities == ("locks", "cards", "grants")
    assert scopes_for(["locks", "cards"]) == ["read:owneraccounts", "read:core:entities"]


@pytest.mark.parametrize("value", ['["locks", "cards", "grants"]', "[ 'cards','grants' ]"])
def test_entities_in_the_environment_may_be_written_as_the_files_list(
    cwd: Path, value: str
) -> None:
    # A list copied from the file into the environment means that list, not names in brackets.
    settings = load(cwd, EXPORTER_TAPKEY__ENTITIES=value)
    assert settings.tapkey.entities == ("locks", "cards", "grants")


def test_an_unreadable_list_in_the_environment_says_how_to_write_it(cwd: Path) -> None:
    message = config_error(cwd, EXPORTER_TAPKEY__ENTITIES='["locks", "cards"')
    assert "EXPORTER_TAPKEY__ENTITIES" in message and "cannot read" in message
    assert "separated by commas" in message


def test_explicit_scopes_are_requested_as_they_are(cwd: Path) -> None:
    text = "[tapkey]\nentities = ['grants']\nscopes = 'read:owneraccounts read:core:entities'\n"
    assert load(cwd, text).tapkey.scope_list == ["read:owneraccounts", "read:core:entities"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "['locks', 'doors']", "unknown entity 'doors': choose from locks, ", id="unknown"
        ),
        pytest.param("['owners']", "owner accounts are always read", id="owners"),
        pytest.param("[1]", "must be a list of names", id="not-names"),
    ],
)
def test_an_unknown_entity_is_a_one_line_config_error(cwd: Path, value: str, expected: str) -> None:
    message = config_error(cwd, f"[tapkey]\nentities = {value}\n")
    assert "[tapkey] entities" in message and expected in message


def test_privacy_keep_is_the_default_and_hash_needs_a_key(cwd: Path, conf_dir: Path) -> None:
    assert load(cwd).privacy.contact_identifier == "keep"
    assert load(cwd).privacy.key() is None
    message = config_error(cwd, "[privacy]\ncontact_identifier = 'hash'\n")
    assert "needs a key" in message and "hash_key_file" in message
    assert "unexpected" not in config_error(cwd, "[privacy]\ncontact_identifier = 'mask'\n")
    key_file = write(conf_dir / "key", "0123456789abcdef0123\n")
    config = write(
        conf_dir / "config.toml", "[privacy]\ncontact_identifier = 'HASH'\nhash_key_file = 'key'\n"
    )
    settings = load_settings(config, env={}, cwd=cwd)
    assert settings.privacy.hash_key_file == key_file
    assert settings.privacy.key() == b"0123456789abcdef0123"
    short = load(cwd, EXPORTER_PRIVACY__CONTACT_IDENTIFIER="hash", EXPORTER_PRIVACY__HASH_KEY="x")
    with pytest.raises(ConfigError, match="shorter than 16"):
        short.privacy.key()
    assert "hash_key=SecretStr('**********')" in repr(short.privacy)
