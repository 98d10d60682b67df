"""Watches Lookout's MQTT topics through a real client (paho-mqtt), as Home Assistant would; runtime/tests/serve.rs
runs it against a mosquitto broker the test starts.

    watch.py collect PORT SECONDS TOPIC...   subscribes to everything; prints the newest payload of each topic
                                             once every TOPIC has one (or SECONDS have passed)
    watch.py follow PORT SECONDS TOPIC...    every payload each TOPIC carries for SECONDS, in order (repeats left out)
    watch.py ask PORT BASE PAYLOAD           publishes PAYLOAD on BASE/ask, prints what comes on BASE/answer
    watch.py publish PORT TOPIC PAYLOAD      publishes PAYLOAD on TOPIC

Prints one JSON object; payloads that are not UTF-8 text come base64-encoded under "base64".
"""

import base64
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def connect(port):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("no connection to the broker")
    return client


def as_json(payload):
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(payload).decode()}


def collect(port, seconds, wanted):
    newest = {}
    lock = threading.Lock()

    def on_message(client, userdata, message):
        with lock:
            newest[message.topic] = as_json(message.payload)

    client = connect(port)
    client.on_message = on_message
    client.subscribe("#", qos=1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with lock:
            if all(topic in newest for topic in wanted):
                break
        time.sleep(0.05)
    client.disconnect()
    with lock:
        return {"messages": newest, "missing": [t for t in wanted if t not in newest]}


def follow(port, seconds, topics):
    seen = {topic: [] for topic in topics}
    lock = threading.Lock()

    def on_message(client, userdata, message):
        with lock:
            history = seen.get(message.topic)
            payload = as_json(message.payload)
            if history is not None and (not history or history[-1] != payload):
                history.append(payload)

    client = connect(port)
    client.on_message = on_message
    for topic in topics:
        client.subscribe(topic, qos=1)
    time.sleep(seconds)
    client.disconnect()
    with lock:
        return {"history": seen}


def ask(port, base, payload):
    answers = []
    subscribed = threading.Event()
    client = connect(port)
    client.on_message = lambda client, userdata, message: answers.append(as_json(message.payload))
    client.on_subscribe = lambda *args: subscribed.set()
    client.subscribe(f"{base}/answer", qos=1)
    subscribed.wait(10)
    client.publish(f"{base}/ask", payload.encode(), qos=1).wait_for_publish(10)
    deadline = time.monotonic() + 120
    while not answers and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    return {"answer": answers[0] if answers else None}


def publish(port, topic, payload):
    client = connect(port)
    client.publish(topic, payload.encode(), qos=1).wait_for_publish(10)
    client.disconnect()
    return {"published": topic}


def main():
    command, port = sys.argv[1], int(sys.argv[2])
    if command == "collect":
        result = collect(port, float(sys.argv[3]), sys.argv[4:])
    elif command == "follow":
        result = follow(port, float(sys.argv[3]), sys.argv[4:])
    elif command == "ask":
        result = ask(port, sys.argv[3], sys.argv[4])
    elif command == "publish":
        result = publish(port, sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
