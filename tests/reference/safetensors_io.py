"""safetensors files from Python without the `safetensors` package (Debian 12 has none).

    import sys; sys.path.insert(0, "tests/reference")
    from safetensors_io import write_safetensors, read_safetensors
    write_safetensors("adapter.safetensors", {"transformer.visual.attn_pool.query": torch.randn(256, 4096)}, "BF16")
    tensors = read_safetensors("adapter.safetensors")        # name -> float32 numpy array

The layout (https://github.com/huggingface/safetensors): 8 bytes little-endian header length n, n bytes of JSON
mapping each name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets from the end of the header) and an
optional "__metadata__" object, then the raw little-endian data. The header is padded with spaces to a multiple of
8 bytes, as the reference writer does. This is the writer the fixture generator (make_fixtures.py) and the notebooks
use; `qwenvl-adapter info --weights FILE` checks what it wrote.
"""

import json

import numpy as np
import torch

TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    """Writes `tensors` (name -> torch tensor or numpy array), names sorted, all converted to `dtype` (F32, F16 or
    BF16, rounded to nearest as torch's .to() does). Returns the size of the data section in bytes."""
    entries = []
    for name in sorted(tensors):
        t = torch.as_tensor(tensors[name]).detach().to(TORCH_DTYPES[dtype]).contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if dtype == "BF16" else t.numpy().tobytes()
        entries.append((name, dtype, list(t.shape), raw))
    return write_entries(path, entries, metadata or {"format": "pt", "generator": "tests/reference/make_fixtures.py"})


def write_entries(path, entries, metadata, metadata_first=False):
    """Writes `entries`, (name, dtype, shape, raw little-endian bytes) in the order their data is laid out, with
    `metadata` as the header's "__metadata__" (its first key with `metadata_first`, as safetensors' own writer puts
    it; else its last). The header's JSON is compact and padded with spaces to a multiple of 8 bytes. Returns the
    size of the data section in bytes."""
    header, blobs, offset = ({"__metadata__": metadata} if metadata_first else {}), [], 0
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if not metadata_first:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    return offset


def read_safetensors(path):
    """An F32, F16 or BF16 safetensors file as name -> float32 numpy array."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = np.frombuffer(data[begin:end], dtype="<u2" if info["dtype"] in ("F16", "BF16") else "<f4")
        if info["dtype"] == "BF16":       # bf16 is the top 16 bits of a float32
            values = (raw.astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "F16":
            values = raw.view(np.float16).astype(np.float32)
        elif info["dtype"] == "F32":
            values = raw.copy()
        else:
            raise ValueError("%s: tensor %s has dtype %s (only F32, F16 and BF16 are read)" % (path, name, info["dtype"]))
        out[name] = values.reshape(info["shape"])
    return out
