"""Every command against every broken input a user has met: one line on stderr, in our words, with the
documented exit code (2: usage, configuration or nothing answering; 1: a failure the command reports), and
never a traceback."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Broker
from test_cli import clean_env, cli
from twilio_connector.simulator import DEFAULT_ACCOUNT_SID

TEXT = ["--to", "+12345000000", "--message", "x", "--timeout", "3"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def one_line(args: list[str], code: int, words: str, env: dict[str, str] | None = None) -> str:
    result = cli(*args, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (args, result.stderr)
    assert len(lines) == 1, (args, result.stderr)
    assert "Traceback" not in result.stderr and words in lines[0], (args, lines[0])
    assert not re.search(r"\b[A-Z][A-Za-z]+(Error|Exception)\b", lines[0]), lines[0]  # our words, not class names
    return lines[0]


def test_send(broker: Broker) -> None:
    one_line(["send", "--broker", "mqtt://127.0.0.1:1", *TEXT], 2, "Connection refused")
    one_line(["send", "--broker", "mqtt://no-such-host.invalid:1883", *TEXT], 2, "cannot reach the broker")
    one_line(["send", "--broker", "htp:/localhost", *TEXT], 2, "must look like mqtt://host:port")
    one_line(["send", "--broker", "mqtt://user:pw@localhost:1883", *TEXT], 2, "must not carry credentials")
    tls_to_plain = broker.url.replace("mqtt://", "mqtts://")
    one_line(["send", "--broker", tls_to_plain, *TEXT], 2, "a TLS listener? mqtts:// needs one")
    one_line(["send", "--broker", broker.url, *TEXT], 2, "no status for")  # no connector runs


def test_run_and_check_config(tmp_path: Path, taken_port: int) -> None:
    env = clean_env(TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID, TWILIO_AUTH_TOKEN="token")
    one_line(["run", "--max-in-flight", "lots"], 2, "--max-in-flight = 'lots': must be a whole number", env)
    one_line(["run", "--broker-url", "mqtt://x"], 2, "(did you mean --broker?)", env)
    one_line(["run", "--broker", "mqtt://"], 2, "--broker = 'mqtt://': must look like mqtt://host:port", env)
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text("max_in_flite = 3\n")
    one_line(["check-config", "--config", str(misspelt)], 2, "(did you mean 'max_in_flight'?)", env)
    one_line(
        ["check-config"],
        2,
        "(did you mean 'TWILIO_CONNECTOR_MAX_IN_FLIGHT'?)",
        {**env, "TWILIO_CONNECTOR_MAX_INFLIGHT": "3"},
    )
    one_line(["check-config", "--config", str(tmp_path / "none.toml")], 2, "No such file or directory", env)
    broken = tmp_path / "broken.toml"
    broken.write_text("a = [\n")
    one_line(["check-config", "--config", str(broken)], 2, "not valid TOML", env)
    one_line(["check-config"], 2, "TWILIO_ACCOUNT_SID (account_sid) is required", clean_env())
    journal = ["--journal-path", str(tmp_path)]  # a directory
    one_line(["run", "--broker", "mqtt://127.0.0.1:1", *journal], 1, "cannot start: Is a directory", env)
    busy = ["--metrics-listen", f"127.0.0.1:{taken_port}", "--journal-path", ":memory:"]
    one_line(["run", "--broker", "mqtt://127.0.0.1:1", *busy], 1, "cannot start: Address already in use", env)


def test_status_journal_and_simulator(tmp_path: Path, taken_port: int) -> None:
    one_line(["status", "--url", "http://no-such-host.invalid:9108"], 2, "the host name does not resolve")
    one_line(["status", "--url", "http://127.0.0.1:1"], 2, "Connection refused")
    one_line(["status", "--url", "::bad"], 2, "is not an http:// URL")
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database, not at all" * 100)
    one_line(["journal", "--journal-path", str(garbage), "counts"], 2, "is not a connector journal")
    one_line(["journal", "--journal-path", str(tmp_path), "counts"], 2, "(that is a directory)")
    one_line(["journal", "--journal-path", str(tmp_path / "none.db"), "counts"], 2, "no journal at")
    one_line(["simulator", "--port", str(taken_port)], 2, "Address already in use")
