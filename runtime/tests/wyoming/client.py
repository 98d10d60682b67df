"""Talks to Lookout's Wyoming server through the `wyoming` package's own client, the way Home Assistant's Wyoming
integration does (runtime/tests/serve.rs runs it with each pinned version of the package on PYTHONPATH).

    client.py describe PORT                   the info, as Info.from_event parses it
    client.py transcribe PORT WAV [RATE ...]  one connection per WAV: transcribe, audio-start, 1024-sample
                                              chunks (converted to RATE, default the WAV's), audio-stop; all
                                              WAVs at once, each on its own connection
    client.py raw PORT                        sends standard input as it is and prints the events that come back

Prints one JSON object per answer on standard output. Its waits stretch by $LOOKOUT_TEST_PATIENCE, as the Rust
tests' deadlines do (under qemu-user).
"""

import asyncio
import json
import os
import sys
import time
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import async_read_event
from wyoming.info import Describe, Info

PATIENCE = max(1.0, float(os.environ.get("LOOKOUT_TEST_PATIENCE") or 1))

SAMPLES_PER_CHUNK = 1024


async def describe(port):
    started = time.monotonic()
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout=1.0 * PATIENCE)
            if event is None:
                raise SystemExit("the server closed the connection before its info")
            if Info.is_type(event.type):
                info = Info.from_event(event)
                break
    asr = info.asr[0]
    return {
        "seconds": time.monotonic() - started,
        "name": asr.name,
        "installed": asr.installed,
        "attribution": asr.attribution.name,
        "models": [{"name": m.name, "installed": m.installed, "languages": m.languages} for m in asr.models],
        "tts": len(info.tts),
    }


async def transcribe(port, path, rate):
    with wave.open(path, "rb") as wav:
        width, channels, wav_rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
        audio = wav.readframes(wav.getnframes())
    rate = rate or wav_rate
    converter = AudioChunkConverter(rate=rate, width=2, channels=1)
    step = SAMPLES_PER_CHUNK * width * channels
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        for start in range(0, len(audio), step):
            chunk = AudioChunk(rate=wav_rate, width=width, channels=channels, audio=audio[start:start + step])
            await client.write_event(converter.convert(chunk).event())
        await client.write_event(AudioStop().event())
        while True:
            event = await client.read_event()
            if event is None:
                return {"wav": path, "rate": rate, "closed": True}
            if Transcript.is_type(event.type):
                transcript = Transcript.from_event(event)
                return {"wav": path, "rate": rate, "text": transcript.text, "language": transcript.language}
            if Error.is_type(event.type):
                error = Error.from_event(event)
                return {"wav": path, "rate": rate, "error": error.text, "code": error.code}


async def raw(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sys.stdin.buffer.read())
    await writer.drain()
    events = []
    while True:
        event = await asyncio.wait_for(async_read_event(reader), timeout=30.0 * PATIENCE)
        if event is None:
            break
        events.append({"type": event.type, "data": event.data})
    writer.close()
    return {"events": events}


async def main():
    command, port = sys.argv[1], int(sys.argv[2])
    if command == "describe":
        print(json.dumps(await describe(port)))
    elif command == "transcribe":
        wavs = [arg for arg in sys.argv[3:] if not arg.isdigit()]
        rates = [int(arg) for arg in sys.argv[3:] if arg.isdigit()]
        rate = rates[0] if rates else None
        for answer in await asyncio.gather(*(transcribe(port, wav, rate) for wav in wavs)):
            print(json.dumps(answer))
    elif command == "raw":
        print(json.dumps(await raw(port)))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    asyncio.run(main())
