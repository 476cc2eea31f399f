"""On the line: images from hot folders, video files, streams and cameras in (``sources``, ``watcher``);
verdicts out to JSON lines, MQTT, OPC UA and webhooks (``sinks``). ``anomalens watch`` runs them."""
