"""Reader for CTranslate2 binary model files (model.bin, format versions 5 and 6)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # 5 = bfloat16


@dataclass
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]

    def get(self, name: str) -> np.ndarray:
        try:
            return self.variables[name]
        except KeyError:
            raise KeyError(f"{self.spec} model has no variable {name!r}") from None

    def f32(self, name: str) -> np.ndarray:
        return self.get(name).astype(np.float32)

    def scalar(self, name: str) -> int:
        value = self.get(name)
        if value.size != 1:
            raise ValueError(f"{name} is not a scalar: shape {value.shape}")
        return int(value.reshape(()))


class _Cursor:
    def __init__(self, data: bytes | memoryview):
        self.data = memoryview(data)
        self.pos = 0

    def unpack(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.unpack("H")  # includes the trailing NUL
        raw = bytes(self.data[self.pos : self.pos + length])
        self.pos += length
        if length == 0 or raw[-1] != 0:
            raise ValueError(f"malformed string at offset {self.pos - length}")
        return raw[:-1].decode("utf-8")

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError("truncated model file")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def parse(data: bytes | memoryview) -> Ct2Model:
    """Parses a CTranslate2 model.bin held in memory; aliases are resolved to their target arrays."""
    cur = _Cursor(data)
    version = cur.unpack("I")
    if version not in (5, 6):
        raise ValueError(f"unsupported CTranslate2 binary version {version}")
    spec = cur.string()
    revision = cur.unpack("I")

    variables: dict[str, np.ndarray] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        rank = cur.unpack("B")
        shape = tuple(cur.unpack("I") for _ in range(rank))
        type_id = cur.unpack("B")
        num_bytes = cur.unpack("I")
        if type_id >= len(_DTYPES) or _DTYPES[type_id] is None:
            raise ValueError(f"{name}: unsupported data type id {type_id}")
        dtype = np.dtype(_DTYPES[type_id])
        if num_bytes != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{name}: {num_bytes} bytes do not match shape {shape} of {dtype}")
        variables[name] = np.frombuffer(cur.take(num_bytes), dtype=dtype).reshape(shape)

    for _ in range(cur.unpack("I")):
        alias = cur.string()
        target = cur.string()
        variables[alias] = variables[target]

    if cur.pos != len(cur.data):
        raise ValueError(f"{len(cur.data) - cur.pos} trailing bytes after the model")
    return Ct2Model(spec=spec, revision=revision, variables=variables)
