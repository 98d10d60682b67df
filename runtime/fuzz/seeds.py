"""Seeds for the runtime's fuzz targets, from the repository's real files: OpenAI chat bodies (text, history, a
data-URL PNG), multipart uploads of a real FLAC, the question suite's questions, and Wyoming sessions streaming
a real recording the way Home Assistant does.

usage: seeds.py CORPUS_DIR PNG FLAC QUESTIONS.toml WAV
"""
import base64
import json
import pathlib
import sys
import tomllib
import wave


def main() -> None:
    corpus, png, flac, questions, wav = (pathlib.Path(a) for a in sys.argv[1:6])
    chat = corpus / "openai_chat"
    chat.mkdir(parents=True, exist_ok=True)
    image = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    bodies = {
        "text": {"model": "smollm2-135m-instruct-q4", "messages": [{"role": "user", "content": "How many people?"}]},
        "history": {
            "model": "smollm2-135m-instruct-q4",
            "max_tokens": 20,
            "stop": ["."],
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What do you see?"},
                {"role": "assistant", "content": "A dog."},
                {"role": "user", "content": "Is it on the left?"},
            ],
        },
        "image": {
            "model": "smollm2-135m-instruct-q4",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What does it say?"},
                {"type": "image_url", "image_url": {"url": image}},
            ]}],
        },
    }
    for name, body in bodies.items():
        (chat / f"{name}.json").write_bytes(json.dumps(body).encode())

    parts = corpus / "multipart"
    parts.mkdir(parents=True, exist_ok=True)
    body = (
        b"multipart/form-data; boundary=XyZ\n"
        b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.flac\"\r\nContent-Type: audio/flac\r\n\r\n"
        + flac.read_bytes()
        + b"\r\n--XyZ--\r\n"
    )
    (parts / "upload.bin").write_bytes(body)

    asked = corpus / "question"
    asked.mkdir(parents=True, exist_ok=True)
    suite = tomllib.loads(questions.read_text())
    texts = sorted({item["question"] for item in suite.get("item", []) if "question" in item})
    for i, text in enumerate(texts):
        (asked / f"q{i:03}.txt").write_text(text)


    wyoming = corpus / "wyoming"
    wyoming.mkdir(parents=True, exist_ok=True)
    with wave.open(str(wav), "rb") as recording:
        rate, channels = recording.getframerate(), recording.getnchannels()
        pcm = recording.readframes(rate // 2)  # half a second keeps the seed small
    audio = {"rate": rate, "width": 2, "channels": channels}

    def message(kind, data=None, payload=b"", inline=False):
        header = {"type": kind, "version": "1.7.1"}
        block = b""
        if data and inline:
            header["data"] = data
        elif data:
            block = json.dumps(data).encode()
            header["data_length"] = len(block)
        if payload:
            header["payload_length"] = len(payload)
        return json.dumps(header).encode() + b"\n" + block + payload

    step = 1024 * 2 * channels
    chunks = b"".join(message("audio-chunk", audio, pcm[i:i + step]) for i in range(0, len(pcm), step))
    sessions = {
        "describe": message("describe"),
        "transcribe": message("transcribe", {"language": "en"}) + message("audio-start", audio) + chunks
        + message("audio-stop"),
        "inline": message("ping", {"text": "hi"}, inline=True) + message("transcribe", {"language": "de-DE"}, inline=True)
        + message("audio-start", audio, inline=True) + message("audio-stop"),
    }
    for name, stream in sessions.items():
        (wyoming / f"{name}.bin").write_bytes(stream)


if __name__ == "__main__":
    main()
