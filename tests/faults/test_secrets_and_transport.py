"""Secrets and transport: no secret in any output, config files readable by others, plain http
refused, TLS verified (custom CA bundles honoured)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url
from support.cli import EXPORTER, CliResult, one_line, run_exporter
from support.helpers import (
    POSTGRES_ADMIN,
    SANDBOX_SECRET,
    closed_port,
    mutate_every_owner,
    run_once,
    subprocess_env,
)
from support.history import run_statuses

from exporter.db.schema import (
    sync_run_owners,
    sync_runs,
)
from exporter.sandbox.server import Fault, Sandbox, SandboxRequest
from exporter.sync import run_records

DB_PASSWORD = "pw-Sup3rSecret"


def _with_password(db_url: str) -> str:
    """The URL with a password (PostgreSQL here trusts local connections and ignores it)."""
    if not db_url.startswith("postgresql"):
        return db_url
    return make_url(db_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_no_secret_token_or_database_password_in_any_output(
    sandbox: Sandbox, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    url = _with_password(db_url)
    env = subprocess_env(sandbox, url)
    env["EXPORTER_LOGGING__LEVEL"] = "DEBUG"
    unreachable = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{closed_port()}/x"
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(name: str, *args: str, code: int, **extra: str) -> None:
        result = run_exporter({**env, **extra}, *args)
        assert result.returncode == code, (name, result.stderr[-2000:])
        outputs[name] = result

    def revoke_on_second_page(request: SandboxRequest) -> None:
        if request.route == "locks" and request.skip:
            sandbox.hooks.remove(revoke_on_second_page)
            sandbox.revoke_tokens()

    run("first load", "run-once", code=0)
    mutate_every_owner(sandbox)
    run("dry run", "run-once", "--dry-run", code=0)
    sandbox.hooks.append(revoke_on_second_page)
    run("token revoked mid-run, json", "run-once", "--format", "json", code=0)
    sandbox.add_fault(Fault("locks", status=401, times=None))
    run("token rejected twice", "run-once", code=1)
    sandbox.clear_faults()
    echo = f'{{"error":"invalid_request","error_description":"bad secret {SANDBOX_SECRET}"}}'
    sandbox.add_fault(Fault("token", status=400, body=echo))
    run("token endpoint echoes the secret", "run-once", code=1)
    sandbox.add_fault(Fault("token", kind="body", body=f'{{"secret": "{SANDBOX_SECRET}"}}'))
    run("token response without a token", "run-once", code=1)
    sandbox.clear_faults()
    # These need no sandbox state of their own: run them side by side.
    parallel = {
        "wrong secret": (
            ["run-once"],
            1,
            {"EXPORTER_TAPKEY__CLIENT_SECRET": "not-" + SANDBOX_SECRET},
        ),
        "check": (["check"], 0, {}),
        "db current": (["db", "current"], 0, {}),
        "db upgrade": (["db", "upgrade"], 0, {}),
        "database unreachable": (["run-once"], 5, {"EXPORTER_DATABASE__URL": unreachable}),
        "check, database unreachable": (["check"], 5, {"EXPORTER_DATABASE__URL": unreachable}),
    }
    started = {
        name: subprocess.Popen(
            [*EXPORTER, *args],
            env={**env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _code, extra) in parallel.items()
    }
    for name, process in started.items():
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == parallel[name][1], (name, stderr[-2000:])
        outputs[name] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )

    if engine.dialect.name == "postgresql":
        _database_away_until_after_the_run(sandbox, db_url, run)
        away = outputs["database away"].stderr
        assert "Traceback" not in away and "could not record the end of run" in away
        assert run_statuses(engine)[-2:] == [("failed", run_records.ABANDONED), ("succeeded", None)]

    tokens = sandbox.issued_tokens
    assert len(tokens) >= 6
    assert "DEBUG" in outputs["first load"].stderr  # the most talkative level really was on
    with engine.connect() as conn:
        stored = [
            json.dumps([list(row) for row in conn.execute(select(table))], default=str)
            for table in (sync_runs, sync_run_owners)
        ]
    assert "refused (401) even with a freshly fetched token" in stored[0]
    texts = {
        f"{name}: {stream}": getattr(result, stream)
        for name, result in outputs.items()
        for stream in ("stdout", "stderr")
    }
    texts.update({"sync_runs": stored[0], "sync_run_owners": stored[1]})
    for where, output in texts.items():
        assert SANDBOX_SECRET not in output, f"client secret in {where}"
        assert DB_PASSWORD not in output, f"database password in {where}"
        leaked = [token for token in tokens if token in output]
        assert not leaked, f"access token in {where}"
    assert "postgres:***@" in outputs["database unreachable"].stderr


def _database_away_until_after_the_run(
    fake: Sandbox, db_url: str, run: Callable[..., None]
) -> None:
    """Mid-crawl, PostgreSQL drops every session and refuses new ones until the run has ended.

    The run cannot even record its end (it logs that on one line) and exits 5; once the
    database is back, the next run (another process) marks it failed (abandoned) and goes on.
    """
    name = make_url(db_url).database
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")

    def database_goes_away(request: SandboxRequest) -> None:
        if request.route != "locks" or not request.skip:
            return
        fake.hooks.remove(database_goes_away)
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = :db"
                ),
                {"db": name},
            )

    fake.hooks.append(database_goes_away)
    try:
        run("database away", "run-once", code=5)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    run("database back", "run-once", code=0)


def _write_config(path: Path, body: str, mode: int) -> Path:
    path.write_text(body, encoding="utf-8")
    path.chmod(mode)
    return path


def test_a_config_file_holding_a_secret_readable_by_others_gets_a_warning(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Callable[..., CliResult]
) -> None:
    body = (
        f'[tapkey]\nclient_id = "sandbox-client"\nclient_secret = "{SANDBOX_SECRET}"\n'
        f'token_url = "{sandbox.token_url}"\napi_base_url = "{sandbox.base_url}"\n'
    )
    shared = _write_config(tmp_path / "shared.toml", body, 0o644)
    private = _write_config(tmp_path / "private.toml", body, 0o600)

    warned = exporter_cli("check", "--config", str(shared))
    quiet = exporter_cli("check", "--config", str(private))

    assert warned.code == 0 and quiet.code == 0
    assert "holds a secret and is readable by every user (mode 0644" in warned.err
    # The owner keeps reading it: root's file may stay readable by its group.
    assert f"chmod {'o-r' if os.geteuid() == 0 else '600'} {shared}" in warned.err
    assert "holds a secret" not in quiet.err
    assert SANDBOX_SECRET not in warned.err + warned.out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_plain_http_to_a_remote_host_is_refused(
    sandbox: Sandbox, tmp_path: Path, exporter_cli: Callable[..., CliResult]
) -> None:
    env = subprocess_env(sandbox, f"sqlite:///{tmp_path / 'x.db'}")
    for key in ("EXPORTER_TAPKEY__API_BASE_URL", "EXPORTER_TAPKEY__TOKEN_URL"):
        result = exporter_cli("run-once", env={**env, key: "http://my.tapkey.example.com"})
        assert result.code == 2
        assert "plain http is only allowed to a loopback host" in one_line(result.err.strip())
    assert sandbox.request_count == 0


@pytest.fixture
def tls_tapkey(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A minimal Tapkey over HTTPS with a certificate from a private CA: (base URL, CA file)."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            token = {"access_token": "tls-token", "token_type": "Bearer", "expires_in": 3600}
            self._reply(json.dumps(token).encode())

        def do_GET(self) -> None:
            self._reply(b"[]")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_tls_is_verified_and_a_custom_ca_bundle_is_honoured(
    sandbox: Sandbox, tmp_path: Path, tls_tapkey: tuple[str, Path]
) -> None:
    base, ca_file = tls_tapkey
    url = f"sqlite:///{tmp_path / 'tls.db'}"
    https = {"token_url": f"{base}/connect/token", "api_base_url": base}

    refused = run_once(sandbox, url, tmp_path, tapkey=https)
    trusted = run_once(sandbox, url, tmp_path, tapkey={**https, "ca_bundle": str(ca_file)})

    assert refused.status == "failed"
    assert "TLS verification of the token endpoint" in one_line(refused.error)
    assert "ca_bundle" in (refused.error or "")
    assert trusted.status == "succeeded", trusted.error
