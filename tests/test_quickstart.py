"""scripts/quickstart.sh: the commands it prints work as pasted, and whatever stops it stops all it started."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).parent.parent


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = set(), [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.add(child)
            queue.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


#: How long the quickstart may take to say it is ready. A bound, not a race: the test goes on the moment the line
#: appears, and fails at once if the script dies. A fresh checkout installs the connector first, and a CI machine
#: running two busy loops beside the suite took over 30 s once.
READY_BOUND = 300.0
#: How long stopping everything may take (the connector finishes its work first).
STOP_BOUND = 60.0


def diagnosis(script: int, started: set[int], tmp_path: Path) -> str:
    """What each process the script started is doing, and their logs: a hang once seen here (HUP, a loaded CI
    machine) left nothing to go on."""
    lines = []
    for pid in sorted({script, *started}):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            waiting = Path(f"/proc/{pid}/wchan").read_text()
        except OSError:
            lines.append(f"{pid}: gone")
            continue
        lines.append(f"{pid} {state} wchan={waiting} {command}")
    for log in sorted((tmp_path / "state").glob("*.log")):
        lines.append(f"--- {log.name}\n{log.read_text()[-3000:]}")
    lines.append(f"--- quickstart.log\n{(tmp_path / 'quickstart.log').read_text()[-3000:]}")
    return "\n".join(lines)


def ready(script: subprocess.Popen[bytes], output: Path) -> None:
    """Return once the connector the script started logged "ready:"; fail if the script ends first."""
    deadline = time.monotonic() + READY_BOUND
    while "ready:" not in output.read_text():
        assert script.poll() is None, f"the quickstart ended (exit {script.returncode}):\n{output.read_text()}"
        assert time.monotonic() < deadline, f"not ready in {READY_BOUND:g} s:\n{output.read_text()}"
        time.sleep(0.05)


@pytest.mark.timeout(READY_BOUND + STOP_BOUND + 60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_quickstart_prints_working_commands_and_stops_everything(tmp_path: Path, signum: signal.Signals) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TWILIO_", "MQTT_", "Default"))}
    env |= {"MQTT_PORT": str(free_port()), "QUICKSTART_STATE": str(tmp_path / "state")}
    output = tmp_path / "quickstart.log"
    with output.open("w") as sink:
        script = subprocess.Popen(
            # Signals at their defaults: a test run under nohup (a CI runner) passes SIGHUP down ignored, and a
            # shell cannot trap a signal ignored when it started, so HUP would not stop the script.
            ["env", "--default-signal", "bash", "scripts/quickstart.sh"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        ready(script, output)
        text = output.read_text()
        send = next(line.strip() for line in text.splitlines() if "twilio-connector send" in line)
        journal = next(line.strip() for line in text.splitlines() if "twilio-connector journal" in line)
        sent = subprocess.run(shlex.split(send), check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["response"]["status"] == "success"
        counted = subprocess.run(
            shlex.split(journal), check=True, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert re.search(r"^sent: 1$", counted.stdout, re.MULTILINE), counted.stdout
        started = descendants(script.pid)
        assert len(started) >= 3  # mosquitto, the simulator, the connector
        script.send_signal(signum)
        deadline = time.monotonic() + STOP_BOUND
        while script.poll() is None or any(alive(pid) for pid in started):
            assert time.monotonic() < deadline, (
                f"not stopped in {STOP_BOUND:g} s:\n{diagnosis(script.pid, started, tmp_path)}"
            )
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a failed test leaves nothing behind either
            os.killpg(script.pid, signal.SIGKILL)
    assert "stopped" in output.read_text()  # the connector shut down gracefully, not killed
    # Mosquitto kept its sessions where the script said (it wrote to $PWD + an absolute path before).
    assert (tmp_path / "state" / "mosquitto.db").exists()
