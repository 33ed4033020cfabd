"""The `twilio-connector` command as users run it: real processes, mosquitto_pub and mosquitto_sub."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CLI, Broker, accept, clean_env, cli
from twilio_connector.domain.contract import Kind, Notification
from twilio_connector.journal.sqlite import SqliteCore
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN

SEED_REQUEST = json.dumps(
    {
        "request": {
            "recipient": {"name": "Darla", "phone_number": "12345000000", "message": "Hello from the edge"},
            "from_number": "19999999999",
            "retries": 3,
        },
        "id": "request123",
    }
)


def test_help_everywhere() -> None:
    for args in ([], ["run"], ["check-config"], ["simulator"]):
        result = cli(*args, "--help")
        assert result.returncode == 0 and "usage: twilio-connector" in result.stdout
    assert "--twilio-api-url" in cli("run", "--help").stdout
    assert re.fullmatch(r"twilio-connector \d+\.\d+\.\d+\n", cli("--version").stdout)


def test_bad_flag_is_one_clear_line() -> None:
    result = cli("run", "--brokr", "mqtt://x")
    assert result.returncode == 2
    assert (
        result.stderr
        == "twilio-connector: error: unrecognized arguments: --brokr (did you mean --broker?) (see --help)\n"
    )


def test_secret_on_the_command_line_is_refused_without_echo() -> None:
    for args in (
        ["run", "--auth-token", "hunter2-SECRET"],
        ["run", "--bogus=hunter2-SECRET"],
        ["run", "hunter2-SECRET"],
    ):
        result = cli(*args, env=clean_env(TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID))
        assert result.returncode == 2, args
        assert "hunter2" not in result.stdout + result.stderr, args
    assert "is not accepted: other users can read command lines" in cli("run", "--auth-token", "x").stderr


def test_check_config_prints_toml_that_reads_back_and_hides_secrets(tmp_path: Path) -> None:
    env = clean_env(
        TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID, TWILIO_AUTH_TOKEN="tok-SECRET", DefaultFromPhoneNumber="19999999999"
    )
    result = cli("check-config", "--broker", "mqtt://127.0.0.1:1999", env=env)
    assert result.returncode == 0, result.stderr
    assert "SECRET" not in result.stdout + result.stderr
    assert "# auth_token: set, hidden" in result.stdout
    assert 'default_from = "+19999999999"' in result.stdout
    assert 'broker_url = "mqtt://127.0.0.1:1999"' in result.stdout
    assert result.stdout.endswith(
        f"# configuration OK (Twilio credentials found for {DEFAULT_ACCOUNT_SID}, user {DEFAULT_ACCOUNT_SID})\n"
    )
    effective = tomllib.loads(result.stdout)  # valid TOML, and it reads back as the same configuration
    assert effective["broker_url"] == "mqtt://127.0.0.1:1999" and "auth_token" not in effective
    fed_back = tmp_path / "effective.toml"
    fed_back.write_text(result.stdout)
    again = cli("check-config", "--config", str(fed_back), env=env)
    assert again.returncode == 0 and again.stdout == result.stdout


def test_check_config_states_the_guards_and_warns_of_an_open_broker() -> None:
    env = clean_env(TWILIO_AUTH_TOKEN="tok")
    example = str(Path(__file__).parent.parent / "examples" / "connector.toml")
    result = cli("check-config", "--config", example, env=env)
    assert result.returncode == 0, result.stderr
    assert "# guard: refused number types: premium_rate, shared_cost, international_network" in result.stdout
    assert "# guard: rate caps: per recipient off/minute, off/day; overall off/minute, off/day" in result.stdout
    assert "logs in to its broker without credentials and no guard bounds the volume" in result.stderr
    strict = cli("check-config", "--config", example, env={**env, "TWILIO_CONNECTOR_POLICY": "strict"})
    assert "# guard: countries: sender" in strict.stdout and "overall 300/minute, 10000/day" in strict.stdout
    assert "without credentials" not in strict.stderr


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('TWILIO_ACCOUNT_SID = "abcd12345xyz"\nmax_in_flight = "many"\n')
    result = cli("check-config", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("twilio-connector: configuration error: ") for line in lines)
    assert "must be AC followed by 32 hexadecimal digits" in lines[0]
    assert "max_in_flight" in lines[1]


def test_run_without_credentials_fails_fast() -> None:
    result = cli("run", env=clean_env(TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID))
    assert result.returncode == 2 and "no Twilio credentials" in result.stderr


@pytest.fixture
def simulator_process() -> Iterator[str]:
    process = subprocess.Popen([*CLI, "simulator", "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    url = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert url, line
    yield url.group(0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_mosquitto_pub_request_gets_its_status_and_sigterm_exits_zero(
    broker: Broker, simulator_process: str, tmp_path: Path
) -> None:
    env = clean_env(TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID, TWILIO_AUTH_TOKEN=DEFAULT_AUTH_TOKEN)
    connector = subprocess.Popen(
        [
            *CLI,
            "run",
            "--broker",
            broker.url,
            "--twilio-api-url",
            simulator_process,
            "--account-sid",
            DEFAULT_ACCOUNT_SID,
            "--default-from",
            "+15005550006",
            "--client-id",
            "cli-test",
            "--journal-path",
            str(tmp_path / "journal.db"),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert connector.stderr is not None
        for line in connector.stderr:  # wait until it is subscribed
            if "ready:" in line:
                break
        port = str(broker.port)
        subscriber = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-q",
                "1",
                "-t",
                "twilio/message/status",
                "-C",
                "1",
                "-W",
                "20",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        # mosquitto_sub has no "subscribed" signal: retry the publish until the status shows up.
        output = ""
        for _ in range(20):
            subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", "twilio/txt", "-m", SEED_REQUEST],
                check=True,
            )
            try:
                output, _ = subscriber.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        status = json.loads(output)
        assert status["id"] == "request123"
        assert status["response"]["status"] == "success"
        assert status["response"]["payload"]["from_number"] == "+19999999999"
        assert status["response"]["payload"]["messages"]["to_number"] == "+12345000000"
        connector.send_signal(signal.SIGTERM)
        remaining = connector.stderr.read()
        assert connector.wait(15) == 0
        assert "stopped" in remaining
        assert DEFAULT_AUTH_TOKEN not in remaining
    finally:
        if connector.poll() is None:
            connector.kill()


def test_journal_command(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    core = SqliteCore(path)
    note = Notification("r1", Kind.SMS, "+12345000000", "+15005550006", "Darla", "hi", 0)
    failed = accept(core, note, 0.0, 0)
    core.finish(failed, "failed", b"{}", None, "The 'To' number is not valid")  # type: ignore[arg-type]
    accept(core, Notification("r2", Kind.SMS, "+12345000001", "+15005550006", "D", "x", 0), 0.0, 0)
    core.close()
    assert cli("journal", "--journal-path", path, "counts").stdout == "accepted: 1\nfailed: 1\nunpublished: 1\n"
    rows = [json.loads(line) for line in cli("journal", "--journal-path", path, "list").stdout.splitlines()]
    assert [(r["request_id"], r["state"]) for r in rows] == [("r2", "accepted"), ("r1", "failed")]
    assert rows[1]["last_error"] == "The 'To' number is not valid"
    retried = cli("journal", "--journal-path", path, "retry", "--wait", "0", str(failed))
    assert retried.returncode == 0 and "once a connector runs" in retried.stdout  # none runs: it waits for one
    assert cli("journal", "--journal-path", path, "retry", str(failed)).returncode == 1  # no longer failed
    assert cli("journal", "--journal-path", path, "counts").stdout == "accepted: 1\nretry: 1\nunpublished: 1\n"
    assert cli("journal", "--journal-path", str(tmp_path / "none.db"), "counts").returncode == 2


def test_shell_completion() -> None:
    result = cli("completion", "bash")
    assert result.returncode == 0
    assert "check-config" in result.stdout and "--twilio-api-url" in result.stdout
    completed = subprocess.run(["bash", "-n"], input=result.stdout, text=True, check=False)
    assert completed.returncode == 0, "the script is valid bash"
