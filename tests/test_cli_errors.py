"""Every command against every broken input a user has met: one line on stderr, in our words, with the
documented exit code (2: usage, configuration or nothing answering; 1: a failure the command reports), and
never a traceback."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from conftest import Broker, clean_env, cli
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID

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
    one_line(
        ["run", "--broker", "mqtt://127.0.0.1:1", *busy],
        1,
        f"cannot start: Address already in use (metrics_listen 127.0.0.1:{taken_port})",
        env,
    )


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
    refused = one_line(["simulator", "--auth-token", "t0ken-on-argv"], 2, "--auth-token is not accepted")
    assert "t0ken-on-argv" not in refused and "SIMULATOR_AUTH_TOKEN or --auth-token-file" in refused
    one_line(["simulator", "--auth-token-file", str(tmp_path / "none")], 2, "cannot read secret file")


def test_tls_files_that_cannot_serve_are_named_with_the_reason(tmp_path: Path) -> None:
    """They gave `Unknown error 524297`, `Unknown error 136`, `Stale file handle`; check-config said OK."""
    authority = trustme.CA()
    first, second = authority.issue_cert("a.example"), authority.issue_cert("b.example")
    cert, other_key, garbage = tmp_path / "cert.pem", tmp_path / "other.key", tmp_path / "garbage.pem"
    first.cert_chain_pems[0].write_to_path(str(cert))
    second.private_key_pem.write_to_path(str(other_key))
    garbage.write_text("not a certificate\n")
    env = {**clean_env(), "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": "x"}
    tls = ["--broker", "mqtts://127.0.0.1:8883", "--journal-path", ":memory:"]
    cases = [
        (["--ca-file", str(garbage)], f"ca_file {garbage}: holds no PEM certificate"),
        (["--cert-file", str(garbage), "--key-file", str(other_key)], f"cert_file {garbage}: holds no PEM certificate"),
        (["--cert-file", str(cert), "--key-file", str(garbage)], f"key_file {garbage}: holds no PEM private key"),
        (["--cert-file", str(cert), "--key-file", str(other_key)], "is not the private key of the certificate"),
        (["--ca-file", str(tmp_path / "none.pem")], "file not found or not readable"),
    ]
    for files, words in cases:
        for command in ("check-config", "run"):
            one_line([command, *tls, *files], 2, words, env)


def test_status_takes_the_address_as_metrics_listen_says_it(taken_port: int) -> None:
    """`status --url 127.0.0.1:9108` (no scheme) said no connector answers while one did."""
    line = one_line(["status", "--url", "127.0.0.1:1"], 2, "Connection refused")
    assert "127.0.0.1:1" in line


def test_a_postgresql_journal_without_its_extra_names_the_extra() -> None:
    """It printed a traceback (`from .pg_store import PgCore`)."""
    program = "import sys; sys.modules['psycopg'] = None; from twilio_connector.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**clean_env(), "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": "x"}
    for command in (["run", "--broker", "mqtt://127.0.0.1:1"], ["journal"]):
        args = [*command, "--journal-url", "postgresql://localhost/journal"]
        if command == ["journal"]:
            args.append("counts")
        result = subprocess.run(
            [sys.executable, "-c", program, *args], capture_output=True, text=True, env=env, check=False, timeout=60
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "twilio-connector[postgres]" in result.stderr, result.stderr
