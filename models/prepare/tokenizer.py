"""Decodes Whisper token ids to text with the GPT-2 byte-level BPE vocabulary in tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible mapping of bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class Tokenizer:
    def __init__(self, path: Path):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        self.id_to_token = {i: t for t, i in data["model"]["vocab"].items()}
        self.special = {t["id"]: t["content"] for t in data["added_tokens"] if t.get("special")}
        self.first_special = min(self.special)
        self._unicode_to_byte = {c: b for b, c in _byte_to_unicode().items()}

    def decode(self, ids: list[int]) -> str:
        """Text of the ordinary tokens; special and timestamp ids (>= <|endoftext|>) are dropped."""
        text = "".join(self.id_to_token[i] for i in ids if i < self.first_special)
        return bytes(self._unicode_to_byte[c] for c in text).decode("utf-8", errors="replace")
