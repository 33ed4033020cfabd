"""Configuration sources and precedence, original parameter names, credentials (env, file, API key, Secrets Manager)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from conftest import free_port, wait_for_port
from twilio_connector.settings.config import ConfigError, describe, load_settings, resolve_credentials
from twilio_connector.settings.schema import Settings
from twilio_connector.settings.secrets import Secret

SID = "AC" + "a" * 32


def problems_of(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return caught.value.problems


def test_defaults_match_the_original_topics() -> None:
    settings = load_settings(env={})
    assert (settings.txt_topic, settings.call_topic, settings.status_topic) == (
        "twilio/txt",
        "twilio/call",
        "twilio/message/status",
    )
    assert settings.broker_url == "mqtt://localhost:1883" and settings.max_in_flight == 128
    assert settings.twilio_api_url == "https://api.twilio.com"


def test_original_parameter_names_work_in_toml_and_env(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'TWILIO_ACCOUNT_SID = "{SID}"\nDefaultFromPhoneNumber = "19999999999"\n'
        '"TwilioAuthTokenSecretArn-ResourceId" = "MyTwilioSecret"\nIsolationMode = "GreengrassContainer"\n'
    )
    settings = load_settings(str(config), env={})
    assert settings.account_sid == SID and settings.default_from == "+19999999999"
    env = {"TWILIO_ACCOUNT_SID": "AC" + "b" * 32, "DefaultFromPhoneNumber": "", "IsolationMode": "NoContainer"}
    assert load_settings(str(config), env=env).account_sid == "AC" + "b" * 32


def test_precedence_is_defaults_file_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[connector]\nmax_in_flight = 8\ntxt_topic = "file/txt"\nmax_retries = 3\n')
    env = {"TWILIO_CONNECTOR_MAX_IN_FLIGHT": "16", "TWILIO_CONNECTOR_TXT_TOPIC": "env/txt"}
    settings = load_settings(str(config), env=env, flags={"txt_topic": "flag/txt", "max_retries": None})
    assert (settings.max_in_flight, settings.txt_topic, settings.max_retries) == (16, "flag/txt", 3)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('colour = "blue"\nmax_in_flight = 0\n')
    problems = problems_of(
        config_file=str(config),
        env={"TWILIO_ACCOUNT_SID": "abcd12345xyz", "TWILIO_CONNECTOR_BROKER_URL": "http://x"},
        flags={"default_from": "12"},
    )
    assert problems == [
        f"config file {config}: unknown setting 'colour'",
        f"max_in_flight (in {config}) = 0: must be a whole number, at least 1",
        "environment variable TWILIO_CONNECTOR_BROKER_URL = 'http://x': must look like mqtt://host:port, "
        "mqtts://host:port, ws://host:port/path or wss://host:port/path",
        "environment variable TWILIO_ACCOUNT_SID = 'abcd12345xyz': must be AC followed by 32 hexadecimal digits",
        "--default-from = '12': is not a valid phone number: expected E.164 (+ and 8 to 15 digits, first digit not 0)",
    ]


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        ({"cert_file": __file__}, "cert_file and key_file must be given together"),
        ({"ca_file": "/nonexistent/ca.pem", "broker_url": "mqtts://h"}, "file not found or not readable"),
        ({"ca_file": __file__}, "ca_file/cert_file need an mqtts:// or wss:// broker_url"),
        ({"txt_topic": "twilio/message/status"}, "must all differ"),
        ({"status_topic": "twilio/#"}, "without wildcards"),
        ({"mqtt_version": "4.2"}, "must be 5 or 3.1.1"),
        ({"broker_url": "mqtt://user:pw@host"}, "must not carry credentials"),
        ({"auth_token_secret_arn": "arn:aws:s3:::bucket"}, "is not a Secrets Manager secret ARN"),
    ],
)
def test_cross_checks(flags: dict[str, str], problem: str) -> None:
    assert any(problem in line for line in problems_of(env={}, flags=flags))


def test_secret_values_never_appear_in_errors_or_descriptions(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("auth_token = 123456789\n")
    [problem] = problems_of(config_file=str(config), env={})
    assert "123456789" not in problem and "(hidden)" in problem
    settings = load_settings(env={"TWILIO_AUTH_TOKEN": "tok-SECRET", "MQTT_PASSWORD": "pw-SECRET"})
    assert "SECRET" not in repr(settings) and "SECRET" not in "\n".join(describe(settings))
    assert "# auth_token: set, hidden" in describe(settings)


def test_credentials_from_env_file_and_api_key(tmp_path: Path) -> None:
    from_env = resolve_credentials(load_settings(env={"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "t1"}))
    assert (from_env.username, from_env.password) == (SID, Secret("t1"))
    token_file = tmp_path / "token"
    token_file.write_text("t2\n")
    from_file = resolve_credentials(
        load_settings(env={"TWILIO_ACCOUNT_SID": SID}, flags={"auth_token_file": str(token_file)})
    )
    assert from_file.password == Secret("t2")
    key = "SK" + "1" * 32
    from_key = resolve_credentials(
        load_settings(env={"TWILIO_ACCOUNT_SID": SID, "TWILIO_API_KEY": key, "TWILIO_API_SECRET": "s"})
    )
    assert (from_key.account_sid, from_key.username, from_key.password) == (SID, key, Secret("s"))


def test_missing_credentials_are_explained() -> None:
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID"):
        resolve_credentials(Settings())
    with pytest.raises(ConfigError, match="no Twilio credentials"):
        resolve_credentials(Settings(account_sid=SID))
    with pytest.raises(ConfigError, match="TWILIO_API_SECRET"):
        load_settings(env={"TWILIO_API_KEY": "SK" + "1" * 32})


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, timeout=30)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


def test_token_from_secrets_manager(aws_env: str) -> None:
    client = boto3.client("secretsmanager", region_name="us-east-1")
    arn = client.create_secret(Name="greengrass-twilio", SecretString="sm-token\n")["ARN"]
    settings = load_settings(env={"TWILIO_ACCOUNT_SID": SID, "TwilioAuthTokenSecretArn": arn})
    assert resolve_credentials(settings).password == Secret("sm-token")


def test_missing_secret_is_a_clear_error(aws_env: str) -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:greengrass-absent-AbCdEf"
    settings = load_settings(env={"TWILIO_ACCOUNT_SID": SID, "TwilioAuthTokenSecretArn": arn})
    with pytest.raises(ConfigError, match=r"Secrets Manager refused .*ResourceNotFoundException"):
        resolve_credentials(settings)


def test_env_is_not_read_when_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_CONNECTOR_MAX_IN_FLIGHT", "5")
    assert load_settings(env={}).max_in_flight == 128
    assert load_settings().max_in_flight == 5
    assert os.environ["TWILIO_CONNECTOR_MAX_IN_FLIGHT"] == "5"


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "https://api.twilio.com"),
        ({"TWILIO_EDGE": "sydney", "TWILIO_REGION": "au1"}, "https://api.sydney.au1.twilio.com"),
        ({"TWILIO_REGION": "us1"}, "https://api.us1.twilio.com"),
        ({"TWILIO_EDGE": "dublin"}, "https://api.dublin.us1.twilio.com"),
        ({"TWILIO_CONNECTOR_TWILIO_API_URL": "http://127.0.0.1:9/"}, "http://127.0.0.1:9"),
    ],
)
def test_regional_edges(env: dict[str, str], url: str) -> None:
    assert load_settings(env=env).api_base_url == url


def test_edge_and_explicit_url_conflict() -> None:
    assert "not both" in problems_of(env={"TWILIO_EDGE": "sydney", "TWILIO_CONNECTOR_TWILIO_API_URL": "http://x"})[0]
    assert "edge or region name" in problems_of(env={"TWILIO_REGION": "AU 1"})[0]


def test_a_regional_api_name_twilio_retired_is_refused_with_the_way_out() -> None:
    """api.ie1.twilio.com and its kind stopped answering on 2026-04-28: a region needs its edge now."""
    for env in ({"TWILIO_REGION": "ie1"}, {"TWILIO_CONNECTOR_TWILIO_API_URL": "https://api.au1.twilio.com"}):
        problem = problems_of(env=env)[0]
        assert "stopped working on 2026-04-28" in problem and "set twilio_edge" in problem
    assert load_settings(env={"TWILIO_EDGE": "dublin", "TWILIO_REGION": "ie1"}).api_base_url == (
        "https://api.dublin.ie1.twilio.com"
    )
