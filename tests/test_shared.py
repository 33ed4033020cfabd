"""Shared subscriptions (`share_group`): several connectors on one broker split the requests between them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import Broker, MqttProbe, RunningConnector, SimulatorHandle, make_settings, sms


def journal_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT request_id FROM requests")}


async def test_two_connectors_in_a_share_group_split_the_requests(
    broker: Broker, simulator: SimulatorHandle, probe: MqttProbe, tmp_path: Path
) -> None:
    """Mosquitto hands each request to one member of the group: every request is sent once and answered once,
    and both members take a share."""
    nodes = [
        RunningConnector(
            make_settings(broker, simulator, share_group="alerts", journal_path=str(tmp_path / f"node{n}.db"))
        )
        for n in range(2)
    ]
    for node in nodes:
        await node.wait_ready()
    try:
        expected = {f"s{n}" for n in range(200)}
        for request_id in sorted(expected):
            await probe.publish("twilio/txt", sms(request_id, message=f"text {request_id}"))
        statuses = await probe.wait_for_ids(expected)
        assert sorted(s["id"] for s in await probe.settle()) == sorted(expected)  # one status each
        assert all(s["response"]["status"] == "success" for s in statuses)
    finally:
        for node in nodes:
            await node.stop()
    bodies = sorted(entry["params"]["Body"] for entry in simulator.created())
    assert bodies == sorted(f"text {request_id}" for request_id in expected)
    shares = [journal_ids(tmp_path / f"node{n}.db") for n in range(2)]
    assert shares[0] | shares[1] == expected and not shares[0] & shares[1]
    assert min(len(share) for share in shares) >= 50  # Mosquitto takes turns
