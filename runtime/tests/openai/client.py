"""Drives a running Lookout daemon with the official OpenAI client and prints what came back, as one JSON object.

Usage: client.py BASE_URL TOKEN IMAGE.jpg SPEECH.wav TIMEOUT_S
The caller (runtime/tests/serve.rs) checks the results; this script only makes the calls the way an application
would: the model list, a chat completion about an image sent as a data URL, the same streamed, transcriptions in
every response format, and a request the daemon must refuse.
"""
import base64
import json
import sys
import time

import openai

base_url, token, image_path, speech_path, timeout_s = sys.argv[1:6]
client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=float(timeout_s))
out = {}

models = [m.id for m in client.models.list()]
out["models"] = models
chat_model = models[0]

with open(image_path, "rb") as f:
    data_url = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
messages = [{"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": data_url}},
]}]

reply = client.chat.completions.create(model=chat_model, messages=messages)
out["chat"] = {
    "text": reply.choices[0].message.content,
    "finish_reason": reply.choices[0].finish_reason,
    "model": reply.model,
    "usage": reply.usage.model_dump() if reply.usage else None,
}

started = time.monotonic()
arrivals, pieces, usage, finish = [], [], None, None
stream = client.chat.completions.create(
    model=chat_model, messages=messages, stream=True, stream_options={"include_usage": True})
for chunk in stream:
    arrivals.append(time.monotonic() - started)
    if chunk.usage:
        usage = chunk.usage.model_dump()
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
out["stream"] = {"text": "".join(pieces), "pieces": len(pieces), "chunks": len(arrivals),
                 "first_s": arrivals[0] if arrivals else None, "last_s": arrivals[-1] if arrivals else None,
                 "finish_reason": finish, "usage": usage}

out["transcriptions"] = {}
for response_format in ["json", "text", "verbose_json", "srt", "vtt"]:
    with open(speech_path, "rb") as f:
        t = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=response_format)
    out["transcriptions"][response_format] = t if isinstance(t, str) else t.model_dump()

try:
    client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    out["remote_image"] = "accepted"
except openai.APIStatusError as e:
    out["remote_image"] = {"status": e.status_code, "code": e.code, "message": e.message}

print(json.dumps(out))
