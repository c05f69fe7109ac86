"""Decode one message read from a broker with the official CloudEvents Python SDK
(PyPI `cloudevents` 2.2) and print what it yields, as JSON, for tests/cloudevents.rs.

Input (stdin, JSON): {"binding": "kafka" | "rabbitmq" | "http", "headers": {name: value},
"content_type": str or null, "key": str or null, "body_b64": str}. The SDK picks binary or
structured mode itself (`from_kafka_event`, `from_rabbitmq_event`, `from_http_event`).
Output: the event's attributes (a time also as `<name>_ms`, Unix milliseconds) and its data
as the SDK decoded it.
"""

import base64
import json
import sys

from cloudevents.core.bindings import http, kafka, rabbitmq


def main() -> None:
    msg = json.load(sys.stdin)
    body = base64.b64decode(msg["body_b64"])
    headers = msg["headers"]
    binding = msg["binding"]
    if binding == "kafka":
        event = kafka.from_kafka_event(
            kafka.KafkaMessage(
                headers={k: v.encode() for k, v in headers.items()},
                key=msg.get("key"),
                value=body,
            )
        )
    elif binding == "rabbitmq":
        event = rabbitmq.from_rabbitmq_event(
            rabbitmq.RabbitMQMessage(
                headers=headers, content_type=msg.get("content_type"), body=body
            )
        )
    elif binding == "http":
        event = http.from_http_event(http.HTTPMessage(headers=headers, body=body))
    else:
        raise SystemExit(f"unknown binding {binding!r}")
    out = {}
    for name, value in event.get_attributes().items():
        if hasattr(value, "timestamp"):
            out[name] = value.isoformat()
            out[name + "_ms"] = round(value.timestamp() * 1000)
        else:
            out[name] = value
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        out["data_b64"] = base64.b64encode(data).decode()
    else:
        out["data"] = data
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
