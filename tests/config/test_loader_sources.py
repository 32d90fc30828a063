"""Where settings come from: defaults, the file, EXPORTER_* variables and command-line overrides.

Which one wins, unknown and invalid keys as one-line errors naming where they were set, where
the config file is found, and config.example.toml loading and documenting every key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from support.config_files import config_error, load, write

from exporter.config.loader import load_settings, resolve_config_path
from exporter.config.sections import ScheduleSettings
from exporter.config.settings import SECTIONS, DatabaseSettings, Settings, env_var_name
from exporter.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


# -- files, environment variables, overrides and their errors --------------------------------------


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


def test_an_env_value_that_is_not_utf8_is_refused_without_showing_it(cwd: Path) -> None:
    # A Latin-1 byte reaches Python as a lone surrogate: the secret's HMAC failed with a traceback.
    assert config_error(cwd, EXPORTER_TAPKEY__CLIENT_SECRET="s3cr\udcfft") == (
        "environment variable EXPORTER_TAPKEY__CLIENT_SECRET is not UTF-8 text; set it as "
        "UTF-8, as the config file must be"
    )


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


# -- where the config file is ----------------------------------------------------------------------


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


# -- the settings models and config.example.toml ---------------------------------------------------


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
