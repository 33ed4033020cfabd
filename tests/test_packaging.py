"""Packaging: the systemd unit, the container file and the compose example are sound and least-privileged."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from twilio_connector.settings.config import load_settings

ROOT = Path(__file__).parent.parent
PACKAGING = ROOT / "packaging"


def test_systemd_unit_is_hardened_and_unprivileged() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(PACKAGING / "systemd" / "twilio-connector.service")
    service = unit["Service"]
    assert service["DynamicUser"] == "yes" and "User" not in service  # never root
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "StateDirectory": "twilio-connector",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key
    assert service["ExecStart"].split()[1:] == ["run", "--config", "/etc/twilio-connector/connector.toml"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_journal_goes_to_the_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/twilio-connector")
    assert load_settings(env={}).journal_path == "/var/lib/twilio-connector/twilio-connector-journal.db"


def test_container_runs_unprivileged_with_a_healthcheck() -> None:
    lines = (PACKAGING / "container" / "Containerfile").read_text().splitlines()
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    assert final_stage[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in final_stage if line.startswith("USER ")]
    assert users and users[-1] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK ") for line in final_stage)
    assert all(re.fullmatch(r"[A-Z]+ .*|#.*| .*|", line) for line in lines), "every instruction is upper-case"


def test_compose_example_wires_broker_simulator_and_connector() -> None:
    compose = yaml.safe_load((PACKAGING / "container" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "simulator", "connector"}
    environment = services["connector"]["environment"]
    assert environment["TWILIO_CONNECTOR_BROKER_URL"] == "mqtt://mosquitto:1883"
    assert (PACKAGING / "container" / "mosquitto.conf").exists()
    assert "max_queued_messages 100000" in (PACKAGING / "container" / "mosquitto.conf").read_text()


def test_greengrass_build_produces_a_sound_recipe(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(PACKAGING / "greengrass" / "build.sh"), "s3://example-bucket/components"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    built = ROOT / "build" / "greengrass"
    [wheel] = built.glob("twilio_connector-*.whl")
    recipe = yaml.safe_load((built / "recipe.yaml").read_text())
    assert recipe["RecipeFormatVersion"] == "2020-01-25"
    assert recipe["ComponentVersion"] == wheel.name.split("-")[1]
    assert "aws.greengrass.TokenExchangeService" in recipe["ComponentDependencies"]  # boto3 gets credentials
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert {
        "TWILIO_ACCOUNT_SID",
        "TwilioAuthTokenSecretArn",
        "TwilioAuthTokenSecretArn-ResourceId",
        "DefaultFromPhoneNumber",
        "IsolationMode",
    } <= set(defaults)
    [manifest] = recipe["Manifests"]
    assert manifest["Artifacts"][0]["URI"] == f"s3://example-bucket/components/{wheel.name}"
    lifecycle = manifest["Lifecycle"]
    assert wheel.name in lifecycle["Install"]["Script"] and "{{" not in json.dumps(recipe)
    # Every {configuration:/X} names a configured key; with sample values the environment is a valid configuration.
    environment = {}
    for name, value in lifecycle["Setenv"].items():
        for key in re.findall(r"\{configuration:/([^}]+)\}", value):
            assert key in defaults, key
        environment[name] = re.sub(r"\{[^}]+\}", "x", value)
    environment.update(
        {name: "" for name, value in lifecycle["Setenv"].items() if value.endswith(("File}", "Username}"))},
        TWILIO_CONNECTOR_TRANSPORT=defaults["Transport"],
        TWILIO_CONNECTOR_STATUS_TO_IOT_CORE=defaults["StatusToIoTCore"],
        TWILIO_CONNECTOR_IOT_CORE_REQUESTS=defaults["IoTCoreRequests"],
        TWILIO_ACCOUNT_SID="AC" + "0" * 32,
        DefaultFromPhoneNumber="+15005550006",
        TwilioAuthTokenSecretArn="arn:aws:secretsmanager:us-east-1:123456789012:secret:greengrass-twilio-AbCdEf",
        TWILIO_CONNECTOR_BROKER_URL=defaults["BrokerUrl"],
        TWILIO_CONNECTOR_TXT_TOPIC=defaults["TxtTopic"],
        TWILIO_CONNECTOR_CALL_TOPIC=defaults["CallTopic"],
        TWILIO_CONNECTOR_STATUS_TOPIC=defaults["StatusTopic"],
    )
    settings = load_settings(env=environment)
    assert settings.auth_token_secret_arn and settings.txt_topic == "twilio/txt"
    assert settings.transport == "greengrass"
    assert lifecycle["Run"]["Script"].endswith("twilio-connector run")
    # The install pins what CI tested and refuses a Python older than 3.11 in words, within a time limit.
    install = lifecycle["Install"]
    assert install["Timeout"] > 0 and "constraints.txt" in install["Script"] and "3, 11" in install["Script"]
    assert {artifact["URI"].rsplit("/", 1)[1] for artifact in manifest["Artifacts"]} == {wheel.name, "constraints.txt"}
    assert "aws.greengrass.SecretManager" in recipe["ComponentDependencies"]


def test_greengrass_access_control_grants_exactly_the_configured_topics_and_secret() -> None:
    """The recipe's accessControl names the topics its configuration names, and the deployment the docs give
    names the secret its configuration reads."""
    recipe = yaml.safe_load((PACKAGING / "greengrass" / "recipe.yaml").read_text())
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    pubsub = defaults["accessControl"]["aws.greengrass.ipc.pubsub"].values()
    granted = {
        (operation, resource)
        for policy in pubsub
        for operation in policy["operations"]
        for resource in policy["resources"]
    }
    assert granted == {
        ("aws.greengrass#SubscribeToTopic", defaults["TxtTopic"]),
        ("aws.greengrass#SubscribeToTopic", defaults["CallTopic"]),
        ("aws.greengrass#PublishToTopic", defaults["StatusTopic"]),
    }
    deployment = json.loads((PACKAGING / "greengrass" / "deployment.json").read_text())
    merge = json.loads(deployment["components"]["community.TwilioNotifications"]["configurationUpdate"]["merge"])
    [secrets] = merge["accessControl"]["aws.greengrass.SecretManager"].values()
    assert secrets["operations"] == ["aws.greengrass#GetSecretValue"]
    assert secrets["resources"] == [merge["TwilioAuthTokenSecretArn"]]
    manager = json.loads(deployment["components"]["aws.greengrass.SecretManager"]["configurationUpdate"]["merge"])
    assert {"arn": merge["TwilioAuthTokenSecretArn"]} in manager["cloudSecrets"]


def test_containerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(PACKAGING / "container" / "Containerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sdist_and_wheel_build_pass_twine_and_install_in_a_fresh_venv(tmp_path: Path) -> None:
    """What a release would publish: both archives build, their metadata renders on PyPI (twine check), and the
    wheel alone, in an empty environment, gives a working command whose version is pyproject's."""
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [sdist], [wheel] = dist.glob("*.tar.gz"), dist.glob("*.whl")
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)],
        check=True,
        timeout=600,
    )
    version = subprocess.run(
        [venv / "bin" / "twilio-connector", "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version.stdout == f"twilio-connector {declared}\n"
    assert wheel.name.startswith(f"twilio_connector-{declared}-")


def test_ha_compose_example_runs_three_connectors_on_one_journal() -> None:
    services = yaml.safe_load((PACKAGING / "container" / "compose-ha.yaml").read_text())["services"]
    connectors = {name: spec for name, spec in services.items() if name.startswith("connector")}
    assert len(connectors) == 3 and {"mosquitto", "postgres", "simulator"} <= set(services)
    environments = [spec["environment"] for spec in connectors.values()]
    assert len({env["TWILIO_CONNECTOR_CLIENT_ID"] for env in environments}) == 3  # a session each
    assert len({env["TWILIO_CONNECTOR_JOURNAL_URL"] for env in environments}) == 1  # one journal
    # With compose's ${VAR:-default} substitutions applied, the environment is a valid configuration.
    resolved = {key: re.sub(r"\$\{[A-Za-z_]+:-([^}]*)\}", r"\1", value) for key, value in environments[0].items()}
    settings = load_settings(env=resolved)
    assert settings.journal_url == "postgresql://connector@postgres:5432/journal" and settings.client_id == "connector1"
