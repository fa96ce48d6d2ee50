"""Minimal safetensors reader/writer (numpy + torch), independent of the engine.

Format: 8-byte little-endian u64 header length N, then N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, optional "__metadata__"}),
then the data buffer; offsets are relative to the start of the buffer.

Supported dtypes: F64, F32, F16, BF16 (read), and F32 / F16 / F64 (write; BF16 write
by truncation-with-rounding of F32).
"""
import json
import struct

import numpy as np
import torch

_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
       "I64": np.int64, "I32": np.int32, "U8": np.uint8}
_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1}


def _bf16_to_f32(raw: bytes, shape):
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
    return (u16 << 16).view(np.float32).reshape(shape)


def _f32_to_bf16(a: np.ndarray) -> bytes:
    u32 = np.ascontiguousarray(a, dtype="<f4").view(np.uint32)
    # round to nearest even
    rounded = (u32 + 0x7FFF + ((u32 >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def load(path):
    """Returns (dict name -> torch.Tensor (float32 for F16/BF16/F32, float64 for F64), metadata)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} exceeds file size {len(blob)}")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    meta = header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        dt, shape = info["dtype"], list(info["shape"])
        b, e = info["data_offsets"]
        count = int(np.prod(shape)) if shape else 1
        if dt not in _SIZE:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        if e - b != count * _SIZE[dt] or e > len(data):
            raise ValueError(f"{path}: tensor {name}: bad data_offsets {b},{e}")
        raw = bytes(data[b:e])
        if dt == "BF16":
            arr = _bf16_to_f32(raw, shape)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_NP[dt]).newbyteorder("<")).reshape(shape)
            if dt == "F16":
                arr = arr.astype(np.float32)
        out[name] = torch.from_numpy(np.array(arr))
    return out, meta


def load_tensors(path):
    return load(path)[0]


def save(path, tensors, dtype="F32", metadata=None):
    """Writes dict name -> torch.Tensor / np.ndarray, all as `dtype` (F32, F16, BF16, F64),
    names sorted, 8-byte aligned header (padded with spaces)."""
    header = {}
    chunks = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name]
        a = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)
        if dtype == "BF16":
            raw = _f32_to_bf16(a.astype(np.float32))
        else:
            raw = np.ascontiguousarray(a.astype(np.dtype(_NP[dtype]).newbyteorder("<"))).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)
