"""Atomic file writes, hashes and manifests.

Every result is written to a temporary file in the destination folder and renamed into place, so an
interrupted run leaves either the old file or the new one, never half of one; resumable jobs rely on
"the file exists" meaning "the result is complete".
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import platform
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    return write_bytes(path, text.encode())


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def save_torch(path: Path, obj: Any) -> Path:
    """Save a checkpoint atomically; load it back with ``torch.load(weights_only=True)``."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (dataclasses, numpy values and paths converted)."""
    return json.loads(json.dumps(obj, default=_json_default))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_arrays(*arrays: np.ndarray) -> str:
    """Hash array contents with their dtypes and shapes (so reshaped or recast data differs)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def environment_manifest(device: str = "cpu") -> dict[str, Any]:
    """What a reviewer needs to know about where a result was produced."""
    import torch

    from nasaudit import __version__, threads

    return {
        "nasaudit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": device,
        "threads": threads.manifest(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
