from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url

from exporter.config.loader import (
    file_permissions_warning,
    load_settings,
    resolve_config_path,
    secret_file_warning,
)
from exporter.config.sections import ScheduleSettings
from exporter.config.settings import (
    SECTIONS,
    DatabaseSettings,
    Settings,
    TapkeySettings,
    env_var_name,
    scopes_for,
)
from exporter.config.urls import masked_url, without_secrets
from exporter.config.values import parse_duration
from exporter.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
SECRET = "s3cr3t-Value-9f2c"


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """A working directory distinct from the config file's folder."""
    path = tmp_path / "cwd"
    path.mkdir()
    return path


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir()
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(cwd: Path, text: str | None = None, **env: str) -> Settings:
    path = write(cwd / "config.toml", text) if text is not None else None
    return load_settings(path, env=env, cwd=cwd)


def config_error(cwd: Path, text: str | None = None, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(cwd, text, **env)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_without_file(cwd: Path) -> None:
    settings = load_settings(None, env={}, cwd=cwd)
    assert settings.source is None
    assert settings.tapkey.token_url == "https://login.tapkey.com/connect/token"
    assert settings.tapkey.scope_list == ["read:owneraccounts", "read:core:entities"]
    assert settings.tapkey.page_size == 1000
    assert settings.database.url == f"sqlite:///{cwd}/exporter.db"
    assert settings.schedule.every == "15m"
    assert settings.schedule.interval_seconds == 900
    assert settings.schedule.cron_trigger() is None
    assert settings.logging.level == "INFO"
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 9464)
    assert settings.http.healthz_max_age_seconds == 3600


def test_file_values(cwd: Path) -> None:
    settings = load(
        cwd,
        """
        [tapkey]
        client_id = "abc"
        page_size = 250
        api_base_url = "https://my.tapkey.com/"
        [schedule]
        every = "1h30m"
        [logging]
        level = "debug"
        format = "JSON"
        [http]
        enabled = true
        listen = "[::]:9000"
        """,
    )
    assert settings.source == cwd / "config.toml"
    assert settings.tapkey.client_id == "abc"
    assert settings.tapkey.page_size == 250
    assert settings.tapkey.api_base_url == "https://my.tapkey.com"
    assert settings.schedule.interval_seconds == 5400
    assert (settings.logging.level, settings.logging.format) == ("DEBUG", "json")
    assert (settings.http.enabled, settings.http.host, settings.http.port) == (True, "::", 9000)


def test_env_beats_file(cwd: Path) -> None:
    settings = load(
        cwd,
        "[tapkey]\npage_size = 250\nworkers = 2\n",
        EXPORTER_TAPKEY__PAGE_SIZE="30",
        EXPORTER_HTTP__ENABLED="true",
        EXPORTER_SYNC__ALLOW_MASS_REMOVAL="false",
    )
    assert settings.tapkey.page_size == 30
    assert settings.tapkey.workers == 2
    assert settings.http.enabled is True
    assert settings.sync.allow_mass_removal is False


def test_override_beats_env(cwd: Path) -> None:
    settings = load_settings(
        write(cwd / "config.toml", "[tapkey]\npage_size = 250\n"),
        env={"EXPORTER_TAPKEY__PAGE_SIZE": "30", "EXPORTER_TAPKEY__WORKERS": "8"},
        cwd=cwd,
        overrides={"tapkey.page_size": 7, "tapkey.workers": None},
    )
    assert settings.tapkey.page_size == 7
    assert settings.tapkey.workers == 8


def test_unknown_override_rejected(cwd: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting 'source\.tapkey'"):
        load_settings(None, env={}, cwd=cwd, overrides={"source.tapkey": 1})


def test_env_names_of_another_shape_are_ignored(cwd: Path) -> None:
    settings = load(
        cwd,
        EXPORTER_PORT="tcp://10.0.0.1:9464",
        EXPORTER_PORT_9464_TCP_ADDR="10.0.0.1",
        EXPORTER_SERVICE_HOST="10.0.0.1",
        EXPORTER_CONFIG="/nonexistent.toml",
        EXPORTER_tapkey__Client_Id="lower-case-works",
    )
    assert settings.tapkey.client_id == "lower-case-works"


def test_empty_env_value_unsets_optional_key(cwd: Path) -> None:
    settings = load(cwd, '[tapkey]\nclient_id = "abc"\n', EXPORTER_TAPKEY__CLIENT_ID="")
    assert settings.tapkey.client_id is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"EXPORTER_TAPKEY__CLIENTID": "x"},
            "unknown environment variable EXPORTER_TAPKEY__CLIENTID: [tapkey] has no key "
            "clientid; did you mean EXPORTER_TAPKEY__CLIENT_ID?",
            id="key",
        ),
        pytest.param(
            {"EXPORTER_TAPKY__CLIENT_ID": "x"},
            "unknown environment variable EXPORTER_TAPKY__CLIENT_ID: no [tapky] section; "
            "did you mean EXPORTER_TAPKEY__CLIENT_ID?",
            id="section",
        ),
        pytest.param(
            {"EXPORTER_X__Y__Z": "x"},
            "unknown environment variable EXPORTER_X__Y__Z: no [x] section; valid choices: "
            "EXPORTER_TAPKEY__*, EXPORTER_DATABASE__*, EXPORTER_SCHEDULE__*, EXPORTER_SYNC__*, "
            "EXPORTER_LOGGING__*, EXPORTER_HTTP__*, EXPORTER_PRIVACY__*",
            id="nothing-close",
        ),
    ],
)
def test_unknown_env_var_suggests(cwd: Path, env: dict[str, str], expected: str) -> None:
    assert config_error(cwd, **env) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "[tapkey]\nclientid = 'x'\n",
            "unknown key [tapkey] clientid in {path}; did you mean client_id?",
            id="key",
        ),
        pytest.param(
            "[databse]\nurl = 'sqlite://'\n",
            "unknown section [databse] in {path}; did you mean [database]?",
            id="section",
        ),
        pytest.param(
            "client_id = 'x'\n",
            "unknown key client_id at the top level of {path}; it belongs under [tapkey]",
            id="top-level",
        ),
        pytest.param(
            "source = '/etc/passwd'\n",
            "unknown key source at the top level of {path}; settings go in sections: "
            "[tapkey], [database], [schedule], [sync], [logging], [http], [privacy]",
            id="source-not-settable",
        ),
    ],
)
def test_unknown_file_key_suggests(cwd: Path, text: str, expected: str) -> None:
    assert config_error(cwd, text) == expected.format(path=cwd / "config.toml")


def test_malformed_toml_names_line_and_column(cwd: Path) -> None:
    message = config_error(cwd, "[tapkey]\npage_size = 100\nworkers 4\n")
    assert message.startswith(f"{cwd / 'config.toml'}: invalid TOML: ")
    assert "line 3, column 9" in message


def test_unreadable_file_is_one_line(cwd: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read config file .*: Is a directory$"):
        load_settings(cwd, env={}, cwd=cwd)


def test_invalid_value_names_key_and_fix(cwd: Path) -> None:
    message = config_error(cwd, "[tapkey]\npage_size = 5001\n")
    assert message == (
        f"{cwd / 'config.toml'}: [tapkey] page_size: must be between 1 and 5000 (got 5001); "
        "fix the value in the file or set EXPORTER_TAPKEY__PAGE_SIZE"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"EXPORTER_TAPKEY__WORKERS": "many"},
            "EXPORTER_TAPKEY__WORKERS: [tapkey] workers: must be a whole number (got 'many'); "
            "fix the environment variable",
            id="int",
        ),
        pytest.param(
            {"EXPORTER_HTTP__ENABLED": "perhaps"},
            "EXPORTER_HTTP__ENABLED: [http] enabled: must be true or false (got 'perhaps'); "
            "fix the environment variable",
            id="bool",
        ),
        pytest.param(
            {"EXPORTER_TAPKEY__READ_TIMEOUT": "0"},
            "EXPORTER_TAPKEY__READ_TIMEOUT: [tapkey] read_timeout: must be greater than 0 "
            "(got '0'); fix the environment variable",
            id="positive",
        ),
        pytest.param(
            {"EXPORTER_LOGGING__LEVEL": "verbose"},
            "EXPORTER_LOGGING__LEVEL: [logging] level: must be 'DEBUG', 'INFO', 'WARNING' or "
            "'ERROR' (got 'VERBOSE'); fix the environment variable",
            id="literal",
        ),
    ],
)
def test_invalid_env_value_names_variable(cwd: Path, env: dict[str, str], expected: str) -> None:
    assert config_error(cwd, **env) == expected


def test_several_errors_report_first_and_count(cwd: Path) -> None:
    message = config_error(cwd, "[tapkey]\npage_size = 0\nworkers = 99\nmax_retries = -1\n")
    assert "[tapkey] page_size" in message
    assert message.endswith("(+2 more)")


def test_a_client_id_longer_than_its_column_is_a_config_error(cwd: Path) -> None:
    # Not a database error at the first run on PostgreSQL/MariaDB (SQLite would store it).
    message = config_error(cwd, f'[tapkey]\nclient_id = "{"x" * 256}"\n')
    assert "[tapkey] client_id: is 256 characters long, at most 255 fit" in message
    assert load_settings(None, env={"EXPORTER_TAPKEY__CLIENT_ID": "x" * 255}, cwd=cwd)


def test_cli_override_error_names_command_line(cwd: Path) -> None:
    with pytest.raises(ConfigError, match=r"^command line: \[tapkey\] workers: must be between"):
        load_settings(None, env={}, cwd=cwd, overrides={"tapkey.workers": 0})


def test_secret_and_secret_file_are_exclusive(cwd: Path) -> None:
    message = config_error(
        cwd,
        f'[tapkey]\nclient_secret = "{SECRET}"\n',
        EXPORTER_TAPKEY__CLIENT_SECRET_FILE="/run/secrets/tapkey",
    )
    assert "client_secret and client_secret_file are both set" in message
    assert SECRET not in message


def test_secret_file_is_read_relative_to_config(cwd: Path, conf_dir: Path) -> None:
    write(conf_dir / "secret.txt", SECRET + "\n")
    config = write(
        conf_dir / "config.toml", '[tapkey]\nclient_id = "x"\nclient_secret_file = "secret.txt"\n'
    )
    settings = load_settings(config, env={}, cwd=cwd)
    assert settings.tapkey.client_secret_file == conf_dir / "secret.txt"
    assert settings.tapkey.credentials() == ("x", SECRET)


def test_inline_secret_credentials(cwd: Path) -> None:
    settings = load(cwd, EXPORTER_TAPKEY__CLIENT_ID="x", EXPORTER_TAPKEY__CLIENT_SECRET=SECRET)
    assert settings.tapkey.credentials() == ("x", SECRET)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(
            TapkeySettings(client_secret=SECRET),
            "missing [tapkey] client_id: set client_id in the [tapkey] section of the config file "
            "or the EXPORTER_TAPKEY__CLIENT_ID environment variable",
            id="no-client-id",
        ),
        pytest.param(
            TapkeySettings(client_id="x"),
            "missing [tapkey] client secret",
            id="no-secret",
        ),
        pytest.param(
            TapkeySettings(client_id="x", client_secret_file=Path("/nonexistent/secret")),
            "cannot read [tapkey] client_secret_file /nonexistent/secret: No such file",
            id="unreadable-secret-file",
        ),
    ],
)
def test_credentials_missing(settings: TapkeySettings, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings.credentials()
    assert str(info.value).startswith(expected)
    assert "EXPORTER_TAPKEY__" in str(info.value) or "client_secret_file" in str(info.value)


def test_empty_secret_file(tmp_path: Path) -> None:
    settings = TapkeySettings(client_id="x", client_secret_file=write(tmp_path / "s", "\n"))
    with pytest.raises(ConfigError, match="is empty"):
        settings.credentials()


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


def test_resolve_config_path(cwd: Path, conf_dir: Path) -> None:
    explicit = write(conf_dir / "a.toml", "")
    assert resolve_config_path(explicit, {}, cwd) == explicit
    assert resolve_config_path(None, {"EXPORTER_CONFIG": str(explicit)}, cwd) == explicit
    assert resolve_config_path(None, {}, cwd) is None
    write(cwd / "config.toml", "")
    assert resolve_config_path(None, {}, cwd) == cwd / "config.toml"
    assert resolve_config_path(Path("config.toml"), {}, cwd) == cwd / "config.toml"
    with pytest.raises(ConfigError, match=r"config file .*missing.toml \(from --config\) does not"):
        resolve_config_path(Path("missing.toml"), {}, cwd)
    with pytest.raises(ConfigError, match=r"\(from EXPORTER_CONFIG\) is a directory"):
        resolve_config_path(None, {"EXPORTER_CONFIG": str(conf_dir)}, cwd)


def not_root_owned(path: Path) -> Path:
    """Give `path` to a user other than root (the tests may run as root, owning what they write)."""
    if os.geteuid() == 0:
        os.chown(path, 54321, 54321)
    return path


def test_permission_warning(cwd: Path, conf_dir: Path) -> None:
    config = write(conf_dir / "config.toml", f'[tapkey]\nclient_secret = "{SECRET}"\n')
    not_root_owned(config).chmod(0o644)
    warning = file_permissions_warning(load_settings(config, env={}, cwd=cwd))
    assert warning is not None
    assert f"{config} holds a secret and is readable by every user (mode 0644" in warning
    assert f"chmod 600 {config}" in warning
    assert SECRET not in warning
    config.chmod(0o600)
    assert file_permissions_warning(load_settings(config, env={}, cwd=cwd)) is None


def test_permission_warning_needs_a_secret_in_the_file(cwd: Path) -> None:
    config = write(cwd / "config.toml", "[tapkey]\nclient_id = 'x'\n")
    not_root_owned(config).chmod(0o644)
    settings = load_settings(config, env={"EXPORTER_TAPKEY__CLIENT_SECRET": SECRET}, cwd=cwd)
    assert file_permissions_warning(settings) is None
    write(config, "[database]\nurl = 'postgresql://u:pw@db/x'\n").chmod(0o640)
    assert "chmod 600" in (file_permissions_warning(load_settings(config, env={}, cwd=cwd)) or "")


def test_permission_warning_for_secret_file(cwd: Path) -> None:
    secret_file = write(cwd / "secret", SECRET)
    not_root_owned(secret_file).chmod(0o604)
    settings = load(cwd, EXPORTER_TAPKEY__CLIENT_SECRET_FILE=str(secret_file))
    assert f"chmod 600 {secret_file}" in (file_permissions_warning(settings) or "")


ROOT, SERVICE, ADMIN = 0, 54321, 54322  # user ids; each user's own group has its number
FILE = Path("/etc/tapkey-exporter/config.toml")
HAND_OVER = f"run as root: chown root:{SERVICE} {FILE} && chmod 640 {FILE}"


@pytest.mark.parametrize(
    ("mode", "owner", "group", "uid", "projected", "expected"),
    [
        # systemd: root owns it, the service reads it through its group (the unit's install line).
        pytest.param(0o640, ROOT, SERVICE, SERVICE, False, None, id="systemd-0640"),
        # ... and root may look at it (`sudo exporter check`) without being told to lock the
        # service out.
        pytest.param(0o640, ROOT, SERVICE, ROOT, False, None, id="systemd-as-root"),
        # A Kubernetes Secret volume with defaultMode 0440 and the pod's fsGroup.
        pytest.param(0o440, ROOT, SERVICE, SERVICE, True, None, id="k8s-0440-fsgroup"),
        pytest.param(0o600, SERVICE, SERVICE, SERVICE, False, None, id="own-0600"),
        pytest.param(0o400, ADMIN, ADMIN, ROOT, False, None, id="other-owner-0400"),
        pytest.param(
            0o644,
            ROOT,
            SERVICE,
            SERVICE,
            False,
            f"readable by every user (mode 0644, owner root); run: chmod o-r {FILE}",
            id="root-owned-0644",
        ),
        pytest.param(
            0o640,
            SERVICE,
            SERVICE,
            SERVICE,
            False,
            f"readable by group {SERVICE} (mode 0640, owner {SERVICE}); run: chmod 600 {FILE}",
            id="own-0640",
        ),
        # The service reads it only because everybody may: `chmod o-r` would lock it out.
        pytest.param(0o644, ROOT, ROOT, SERVICE, False, HAND_OVER, id="root-root-0644"),
        # Someone else's file, read through its group: hand it to root, keeping the group.
        pytest.param(0o640, ADMIN, SERVICE, SERVICE, False, HAND_OVER, id="admin-owned-0640"),
        # Kubernetes' default Secret mode: only the pod spec can change it.
        pytest.param(
            0o644,
            ROOT,
            ROOT,
            SERVICE,
            True,
            "set the volume's defaultMode to 0440 and the pod's securityContext.fsGroup",
            id="k8s-default-0644",
        ),
    ],
)
def test_secret_file_permissions(
    mode: int, owner: int, group: int, uid: int, projected: bool, expected: str | None
) -> None:
    warning = secret_file_warning(
        FILE, mode=mode, owner=owner, group=group, uid=uid, groups=[uid], projected=projected
    )
    if expected is None:
        assert warning is None
    else:
        assert warning is not None and warning.startswith(f"{FILE} holds a secret")
        assert expected in warning


def test_a_kubernetes_volume_file_is_recognised(tmp_path: Path) -> None:
    # A Secret volume holds each key as a link into ..data, which the kubelet swaps atomically.
    data = tmp_path / "..2026_01_01_00_00_00.1"
    data.mkdir()
    write(data / "client-secret", SECRET).chmod(0o644)
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "client-secret").symlink_to("..data/client-secret")
    settings = load(tmp_path, EXPORTER_TAPKEY__CLIENT_SECRET_FILE=str(tmp_path / "client-secret"))
    assert "set the volume's defaultMode to 0440" in (file_permissions_warning(settings) or "")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("postgresql://u:pw@db:5432/x", "postgresql://u:***@db:5432/x", id="password"),
        pytest.param("sqlite:////tmp/x.db", "sqlite:////tmp/x.db", id="no-password"),
        pytest.param("postgresql://u:p@ss@db/x", "postgresql://u:***@db/x", id="unescaped-at"),
        pytest.param("junk://u:pw@h:notaport/x", "junk://u:***@h:notaport/x", id="junk"),
        pytest.param("", "", id="empty"),
        pytest.param(
            "postgresql://db/x?password=hunter22&sslmode=require",
            "postgresql://db/x?password=***&sslmode=require",
            id="query-password",
        ),
        pytest.param(
            "postgresql://u:pw@db/x?sslpassword=k3y&application_name=bi&PWD=z",
            "postgresql://u:***@db/x?PWD=***&application_name=bi&sslpassword=***",
            id="query-secrets",
        ),
        pytest.param(
            "mysql+pymysql://root@db/x?passwd=s3cret&charset=utf8mb4",
            "mysql+pymysql://root@db/x?charset=utf8mb4&passwd=***",
            id="pymysql-passwd",
        ),
        pytest.param(
            "junk://u:pw@h:notaport/x?api_token=abc",
            "junk://u:***@h:notaport/x?api_token=***",
            id="junk-query",
        ),
    ],
)
def test_masked_url(url: str, expected: str) -> None:
    assert masked_url(url) == expected
    if url.startswith(("postgresql", "mysql")):  # an engine's URL object masks the same
        assert masked_url(make_url(url)) == expected


def test_without_secrets_masks_every_credential_of_the_url_in_a_message() -> None:
    url = "postgresql://u:pa%40ss@db/x?password=hunter22&sslpassword=k%23y9"
    message = 'invalid option near "password=hunter22"; key k#y9; user pa@ss; pa%40ss'
    assert (
        without_secrets(message, url)
        == 'invalid option near "password=***"; key ***; user ***; ***'
    )
    assert without_secrets("a pw", "postgresql://u:pw@db/x") == "a pw"  # too short to replace


def test_secret_never_shown(cwd: Path) -> None:
    settings = load(
        cwd,
        EXPORTER_TAPKEY__CLIENT_SECRET=SECRET,
        EXPORTER_DATABASE__URL=f"postgresql://u:{SECRET}@db/x",
    )
    for text in (str(settings), repr(settings), repr(settings.database), str(settings.tapkey)):
        assert SECRET not in text
    # Invalid secret input and errors elsewhere never echo the secret either.
    messages = [
        config_error(cwd, "[tapkey]\nclient_secret = 12345678\n"),
        config_error(cwd, EXPORTER_TAPKEY__CLIENT_SECRET=SECRET, EXPORTER_TAPKEY__WORKERS="x"),
        config_error(cwd, EXPORTER_DATABASE__URL=f"oracle://u:{SECRET}@db/x"),
        config_error(
            cwd,
            EXPORTER_DATABASE__URL=f"postgresql://u:{SECRET}@db/x",
            **{"EXPORTER_DATABASE__SCHEMA_NAME": "bad name"},
        ),
    ]
    assert "12345678" not in messages[0]
    for message in messages:
        assert SECRET not in message
    with pytest.raises(ConfigError) as info:
        load(cwd, EXPORTER_TAPKEY__CLIENT_SECRET=SECRET, EXPORTER_TAPKEY__CLIENT_SECRET_FILE="/x")
    assert info.value.__context__ is None
    assert info.value.__cause__ is None


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.tapkey.page_size = 5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ScheduleSettings(evry="5m")  # type: ignore[call-arg]


def test_direct_construction_keeps_relative_paths() -> None:
    assert DatabaseSettings().url == "sqlite:///exporter.db"
    assert ScheduleSettings(cron="0 * * * *").every is None


def test_example_config_loads(cwd: Path) -> None:
    settings = load_settings(EXAMPLE, env={}, cwd=cwd)
    assert settings.source == EXAMPLE
    assert settings.database.url == f"sqlite:///{EXAMPLE.parent}/exporter.db"
    defaults = load_settings(None, env={}, cwd=EXAMPLE.parent)
    assert settings.model_dump(exclude={"source"}) == defaults.model_dump(exclude={"source"})


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S))
    assert set(sections) == set(SECTIONS)
    for name, model in SECTIONS.items():
        assert issubclass(model, BaseModel)
        for key in model.model_fields:
            assert re.search(rf"^#? ?{key} = ", sections[name], flags=re.M), f"[{name}] {key}"
            assert f"Env: {env_var_name(name, key)}" in sections[name], env_var_name(name, key)


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
