"""The OPC UA sink: anomalens hosts the server on 127.0.0.1, an asyncua client (as a PLC would) reads it back."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from anomalens.errors import AnomalensError
from anomalens.line.sinks import SinkSettings, open_sinks

pytest.importorskip("asyncua", reason="asyncua is in the 'line' extra (make setup installs it)")

VARIABLES = ("LastVerdict", "LastScore", "NormalizedScore", "PartCount", "DefectCount", "Heartbeat", "ModelId")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_inspection(port: int, *, try_write: bool = False) -> dict:
    """The Inspection object's variables, read by a client; with ``try_write`` the status of a write too."""
    from asyncua import Client, ua

    async def read():
        async with Client(f"opc.tcp://127.0.0.1:{port}/anomalens/", timeout=10) as client:
            index = await client.get_namespace_index("urn:anomalens")
            inspection = await client.nodes.objects.get_child(f"{index}:Inspection")
            values = {}
            for name in VARIABLES:
                node = await inspection.get_child(f"{index}:{name}")
                values[name] = await node.read_value()
                values[f"{name}.type"] = (await node.read_data_type_as_variant_type()).name
            if try_write:
                node = await inspection.get_child(f"{index}:PartCount")
                try:
                    await node.write_value(ua.Variant(0, ua.VariantType.UInt64))
                    values["write"] = "accepted"
                except ua.UaStatusCodeError as exc:
                    values["write"] = type(exc).__name__
            return values

    return asyncio.run(read())


@pytest.fixture(scope="module")
def server():
    port = free_port()
    sinks = open_sinks([f"opcua://127.0.0.1:{port}"], model_id="padim-1234", spool_dir=None,
                       settings=SinkSettings(heartbeat=0.2))
    yield port, sinks
    sinks.close()


def test_a_client_reads_the_last_verdict_and_the_counts(server):
    port, sinks = server
    before = read_inspection(port)
    assert before["PartCount"] == 0 and before["ModelId"] == "padim-1234"
    scores = [(0.2, 0.4, False), (3.5, 1.75, True), (0.1, 0.2, False), (4.0, 2.0, True), (2.5, 1.25, True)]
    for sequence, (score, normalized, anomalous) in enumerate(scores):
        sinks.send({"sequence": sequence, "score": score, "normalized_score": normalized, "anomalous": anomalous,
                    "model_id": "padim-1234"})
    end = time.monotonic() + 10
    while sinks.stats()[f"opcua://127.0.0.1:{port}"]["sent"] < 5 and time.monotonic() < end:
        time.sleep(0.02)
    values = read_inspection(port, try_write=True)
    assert (values["LastVerdict"], values["LastScore"], values["NormalizedScore"]) == (True, 2.5, 1.25)
    assert (values["PartCount"], values["DefectCount"]) == (5, 3)
    assert {name: values[f"{name}.type"] for name in VARIABLES} == {
        "LastVerdict": "Boolean", "LastScore": "Double", "NormalizedScore": "Double", "PartCount": "UInt64",
        "DefectCount": "UInt64", "Heartbeat": "DateTime", "ModelId": "String"}
    assert values["write"] != "accepted"  # a PLC reads; it cannot reset the counters
    assert sinks.stats()[f"opcua://127.0.0.1:{port}"] == {"sent": 5, "failed": 0, "spooled": 0, "dropped": 0,
                                                          "pending": 0}


def test_the_heartbeat_moves_while_anomalens_runs(server):
    port, _ = server
    first = read_inspection(port)["Heartbeat"]
    time.sleep(0.5)
    assert read_inspection(port)["Heartbeat"] > first


def test_a_port_already_taken_is_one_clear_line(server):
    port, _ = server
    with pytest.raises(AnomalensError, match="cannot listen on 127.0.0.1") as error:
        open_sinks([f"opcua://127.0.0.1:{port}"], model_id="m", spool_dir=None)
    assert "\n" not in str(error.value)
