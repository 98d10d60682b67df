"""Small fuzzing seeds from the bundle's real files, with their vocabularies cut to the first tokens: libFuzzer keeps
its corpus in memory, and units of several MB would fill the RSS limit by themselves.

usage: seeds.py gguf MODEL.gguf OUT.gguf        the header and metadata, no tensor directory
       seeds.py tokenizer tokenizer.json OUT.json
"""
import json
import struct
import sys

KEPT_TOKENS = 2000
# Byte size of each fixed-size metadata value type; 8 is a string, 9 an array.
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_value(data: bytes, pos: int, kind: int):
    if kind in FIXED:
        return struct.unpack_from(FORMATS[kind], data, pos)[0], pos + FIXED[kind]
    if kind == 8:
        (length,) = struct.unpack_from("<Q", data, pos)
        return data[pos + 8:pos + 8 + length].decode(), pos + 8 + length
    if kind == 9:
        item_kind, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        items = []
        for _ in range(count):
            item, pos = read_value(data, pos, item_kind)
            items.append(item)
        return (item_kind, items), pos
    raise ValueError(f"unknown metadata type {kind}")


def write_value(kind: int, value) -> bytes:
    if kind in FIXED:
        return struct.pack(FORMATS[kind], value)
    if kind == 8:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw
    item_kind, items = value
    return struct.pack("<IQ", item_kind, len(items)) + b"".join(write_value(item_kind, i) for i in items)


def kept_merges(merges: list[str], tokens: set[str]) -> list[str]:
    return [m for m in merges if all(t in tokens for t in (*m.split(" ", 1), m.replace(" ", "", 1)))]


def gguf_seed(source: str, out: str) -> None:
    with open(source, "rb") as f:
        data = f.read(64 << 20)
    magic, version, _tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF", source
    pos, entries = 24, []
    for _ in range(n_kv):
        (key_len,) = struct.unpack_from("<Q", data, pos)
        key = data[pos + 8:pos + 8 + key_len].decode()
        (kind,) = struct.unpack_from("<I", data, pos + 8 + key_len)
        value, pos = read_value(data, pos + 12 + key_len, kind)
        entries.append([key, kind, value])
    values = {key: value for key, _, value in entries}
    tokens = set(values["tokenizer.ggml.tokens"][1][:KEPT_TOKENS])
    for entry in entries:
        key, value = entry[0], entry[2]
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
            entry[2] = (value[0], value[1][:KEPT_TOKENS])
        elif key == "tokenizer.ggml.merges":
            entry[2] = (value[0], kept_merges(value[1], tokens))
    with open(out, "wb") as f:
        f.write(struct.pack("<4sIQQ", magic, version, 0, len(entries)))
        for key, kind, value in entries:
            f.write(write_value(8, key) + struct.pack("<I", kind) + write_value(kind, value))


def tokenizer_seed(source: str, out: str) -> None:
    with open(source, encoding="utf-8") as f:
        spec = json.load(f)
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < KEPT_TOKENS}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = kept_merges(spec["model"].get("merges", []), set(vocab))
    for n, added in enumerate(spec["added_tokens"]):
        added["id"] = KEPT_TOKENS + n
    with open(out, "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)


if __name__ == "__main__":
    {"gguf": gguf_seed, "tokenizer": tokenizer_seed}[sys.argv[1]](sys.argv[2], sys.argv[3])
