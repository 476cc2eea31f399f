"""MQTT (paho-mqtt 2): each result to ``PREFIX/ok`` or ``PREFIX/defect`` with QoS 1, and the latest one
retained on ``PREFIX/last`` (a client that subscribes later reads the last verdict at once).

A record counts as sent when the broker acknowledged both publications (PUBACK). paho's network thread
connects and reconnects with exponential back-off (``retry_initial`` … ``retry_max``); a broker that is
down at start is not an error. While it is down the records go to the spool and are replayed in order
after the reconnection. Delivery is at least once (QoS 1): a publication whose acknowledgement was lost
with the connection may arrive twice.
"""

from __future__ import annotations

import os
import threading
import uuid

from anomalens.line.sinks.delivery import PeerDown, Sink


class MqttSink(Sink):
    def __init__(self, *args, host: str, port: int, prefix: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.host = host
        self.port = port
        self.prefix = prefix
        self._client = None
        self._why_down = "not connected yet"
        self._first_try_done = threading.Event()

    def connect(self) -> None:
        import paho.mqtt.client as mqtt

        client_id = f"anomalens-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # unique: a broker drops a duplicate's peer
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        # paho types these as int but waits on floats: sub-second waits work (tests use them)
        client.reconnect_delay_set(min_delay=self.settings.retry_initial, max_delay=self.settings.retry_max)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        # paho keeps unacknowledged QoS-1 messages itself too; its queue only needs to hold what is in flight
        client.max_queued_messages_set(self.settings.queue_size)
        client.connect_async(self.host, self.port, keepalive=30)
        self._client = client
        client.loop_start()
        # the first records should not find a reachable broker "down" only because the handshake is not over
        self._first_try_done.wait(self.settings.timeout)

    # paho's network thread calls these
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._why_down = f"the broker refused the connection: {reason_code}"
        else:
            self.peer_is_back()
        self._first_try_done.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._why_down = f"cannot connect to {self.host}:{self.port}"
        self._first_try_done.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._why_down = f"disconnected from {self.host}:{self.port} ({reason_code})"
        self._first_try_done.set()

    def deliver(self, record: dict, payload: str) -> None:
        import paho.mqtt.client as mqtt

        client = self._client
        if not client.is_connected():
            raise PeerDown(self._why_down)
        verdict = "defect" if record.get("anomalous") else "ok"
        messages = [client.publish(f"{self.prefix}/{verdict}", payload, qos=1),
                    client.publish(f"{self.prefix}/last", payload, qos=1, retain=True)]
        for message in messages:
            if message.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PeerDown(mqtt.error_string(message.rc))
        for message in messages:
            try:
                message.wait_for_publish(timeout=self.settings.timeout)
            except (RuntimeError, ValueError) as exc:  # the connection went while waiting
                raise PeerDown(str(exc)) from None
            if not message.is_published():
                raise PeerDown(f"no acknowledgement from {self.host}:{self.port} within {self.settings.timeout:g} s")

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
