"""Atomic file writes, guarded reads, hashes and manifests.

Every result is written to a temporary file in the destination folder and renamed into place, so an
interrupted run leaves either the old file or the new one, never half of one; resumable jobs rely on
"the file exists" meaning "the result is complete". A file that is damaged anyway (a disk filled up,
someone truncated it) is read through ``read_json`` / ``load_torch``, which refuse it with one line
saying what deleting it costs, instead of a decoder's traceback.
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

from nasaudit.errors import NasauditError


def _umask() -> int:
    """The process's umask (reading it means setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename: others could not read
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


def damaged(path: Path, problem: str, on_delete: str) -> NasauditError:
    """The one-line refusal of a file that exists but cannot be trusted; ``on_delete`` says what a
    rerun does once it is deleted (recomputes everything, resumes from a checkpoint, ...)."""
    return NasauditError(f"{path}: damaged or truncated ({problem}); delete it and rerun, which {on_delete}")


def read_json(path: Path, on_delete: str) -> Any:
    """A JSON file written by ``write_json``; a damaged one is a one-line error (see ``damaged``)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise damaged(path, _first_line(exc), on_delete) from None


def load_torch(path: Path, on_delete: str, map_location: Any = "cpu") -> Any:
    """A checkpoint written by ``save_torch``, loaded with ``weights_only=True``; damaged: one line."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise damaged(path, _first_line(exc), on_delete) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_types(record: Mapping[str, Any], types: Mapping[str, type]) -> str:
    """The first field of ``record`` whose value is not of its type (bool is not an int), as a phrase;
    empty when all are right. File readers turn it into their one-line error."""
    for key, kind in types.items():
        value = record.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key} must be {kind.__name__}, got {type(value).__name__} {value!r}"[:200]
    return ""


def check_output(path: Path, folder: bool) -> Path:
    """Refuse, before any work, an output location that cannot be written: a file where a folder is
    wanted (or the reverse), a path inside a file, a folder without write permission."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        actual, wanted = ("file", "folder") if folder else ("folder", "file")
        raise NasauditError(f"output {path} exists and is a {actual}; give a {wanted} path")
    existing = path if path.exists() and folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NasauditError(f"output {path} lies inside {existing}, which is a file; choose another location")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NasauditError(f"output {path}: {existing} is not writable; choose a location you can write")
    return path


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

    from nasaudit import __version__

    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {
        "nasaudit": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA torch was built with (None: a CPU-only build)
        "gpu": gpu,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "device": device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
