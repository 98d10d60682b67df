"""Seeds for the runtime's fuzz targets, from the repository's real files: OpenAI chat bodies (text, history, a
data-URL PNG), multipart uploads of a real FLAC, and the question suite's questions.

usage: seeds.py CORPUS_DIR PNG FLAC QUESTIONS.toml
"""
import base64
import json
import pathlib
import sys
import tomllib


def main() -> None:
    corpus, png, flac, questions = (pathlib.Path(a) for a in sys.argv[1:5])
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


if __name__ == "__main__":
    main()
