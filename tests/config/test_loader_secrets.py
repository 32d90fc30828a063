"""The client secret in the config: inline or in a file, file permissions, never shown.

Also the URLs whose passwords are masked in messages.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from support.config_files import SECRET, config_error, load, write

from exporter.config.loader import file_permissions_warning, load_settings, secret_file_warning
from exporter.config.settings import TapkeySettings
from exporter.config.urls import masked_url, without_secrets
from exporter.errors import ConfigError

# -- the client secret and its file ----------------------------------------------------------------


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


# -- permissions of files holding a secret ---------------------------------------------------------


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


# -- secrets kept out of what is shown -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("postgresql://u:pw@db:5432/x", "postgresql://u:***@db:5432/x", id="password"),
        pytest.param("sqlite:////tmp/x.db", "sqlite:////tmp/x.db", id="no-password"),
        pytest.param("postgresql://u:p@ss@db/x", "postgresql://u:***@db/x", id="unescaped-at"),
        pytest.param("junk://u:pw@h:notaport/x", "junk://u:***@h:notaport/x", id="junk"),
        # A mistyped scheme: no "://" to find the user by.
        pytest.param("postgresql:/u:pw@h/x", "postgresql:/u:***@h/x", id="one-slash"),
        pytest.param("postgresql//u:pw@h/x", "postgresql//u:***@h/x", id="no-colon"),
        pytest.param("u:pw@h/x", "u:***@h/x", id="no-scheme"),
        pytest.param("postgresql:u:pw@h/x", "postgresql:***@h/x", id="no-slashes"),
        pytest.param("postgresql:/u:/p:w@h/x", "postgresql:/u:***@h/x", id="colons"),
        pytest.param("postgresql:/u:/pw@h/x", "postgresql:/u:***@h/x", id="slash-password"),
        pytest.param("postgresql:/u@h/x", "postgresql:/u@h/x", id="junk-without-password"),
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
    if url.startswith(("postgresql://", "mysql")):  # an engine's URL object masks the same
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
