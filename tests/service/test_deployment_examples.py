"""The shipped deployment examples (Kubernetes, systemd, crontab, Docker) fit the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from exporter import cli
from exporter.config.loader import load_settings, secret_file_warning

# -- the shipped deployment examples -------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_the_kubernetes_manifest_configures_a_reachable_healthz(tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {}
    for variable in container["env"]:
        if "secretKeyRef" in variable.get("valueFrom", {}):
            env[variable["name"]] = (
                "postgresql://u:p@db/x" if "DATABASE" in variable["name"] else "s"
            )
        elif "value" in variable:
            env[variable["name"]] = variable["value"].replace("$(POD_IP)", "10.1.2.3")
    assert {"EXPORTER_TAPKEY__CLIENT_SECRET", "EXPORTER_DATABASE__URL"} <= set(env)
    config = tmp_path / "config.toml"
    config.write_text(config_map["data"]["config.toml"])
    settings = load_settings(config, env=env, cwd=tmp_path)
    assert settings.tapkey.credentials()[1] == "s"
    assert settings.http.enabled
    assert (settings.http.host, settings.http.port) == ("10.1.2.3", 9464)
    [port] = container["ports"]
    assert port["containerPort"] == settings.http.port
    # Readiness (and alerting) ask whether syncs succeed; liveness only whether the process
    # serves, so a Tapkey or database outage does not restart the pods.
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port["name"]}
    assert "startupProbe" not in container  # /livez answers from the start
    assert pod["terminationGracePeriodSeconds"] > settings.schedule.shutdown_timeout
    assert container["args"][0] == "serve"
    assert container["securityContext"]["readOnlyRootFilesystem"]


def test_the_systemd_unit_crontab_and_dockerfile_fit_the_cli(tmp_path: Path) -> None:
    unit = (REPO / "deploy" / "tapkey-exporter.service").read_text()
    values = dict(line.split("=", 1) for line in unit.splitlines() if re.match(r"[A-Za-z]+=", line))
    # The install lines of the unit's header are docs/deployment.md's, and the config file they
    # install passes the permission check for the service user (no "chmod 600" that would lock it
    # out).
    installs = [line[1:].strip() for line in unit.splitlines() if line.startswith("#   install ")]
    deployment = (REPO / "docs" / "deployment.md").read_text()
    documented = [line.strip() for line in deployment.splitlines()]
    assert len(installs) == 3 and all(line in documented for line in installs)
    [config_line] = [line for line in installs if line.endswith("config.toml")]
    words = config_line.split()
    mode, owner = int(words[words.index("-m") + 1], 8), words[words.index("-o") + 1]
    service = 54321  # the tapkey-exporter user, in its group of the same number
    assert owner == "root"
    assert (
        secret_file_warning(
            Path(words[-1]), mode=mode, owner=0, group=service, uid=service, groups=[service]
        )
        is None
    )
    assert values["ExecStart"].split()[1:3] == ["serve", "--config"]
    # The exporter is installed from the checkout (README): a bare name would fetch whatever an
    # index serves under that name.
    [pip] = [line for line in unit.splitlines() if "/pip install " in line]
    target = pip.split("/pip install ", 1)[1].split()[0].strip("'\"")
    assert target.startswith(("./", "/")), pip
    default_timeout = load_settings(None, env={}, cwd=tmp_path).schedule.shutdown_timeout
    assert int(values["TimeoutStopSec"]) > default_timeout
    assert values["KillSignal"] == "SIGTERM"

    [entry] = [
        line
        for line in (REPO / "deploy" / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    fields = entry.split()
    assert fields[6:8] == ["/opt/tapkey-exporter/bin/exporter", "run-once"]
    usage = CliRunner().invoke(cli.app, ["run-once", "--help"], terminal_width=200).output
    for option in (word for word in fields[8:] if word.startswith("--")):
        assert option in usage

    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    assert "[postgres,mysql]" in dockerfile
    assert 'ENTRYPOINT ["exporter"]' in dockerfile and 'CMD ["serve"]' in dockerfile
