"""Which run made a job's files, and the lock a job holds while it makes them.

A job (a poison, a defended dataset, a victim, a search, a training run, a sensitivity record, a grid
task) writes its result once; later calls find it on disk. Found is not the same as made by this
call: another seed, profile, poison or option may have made it. So every job builds its *identity*,
a plain-JSON dict of everything its result depends on (the job kind, the algorithm, the hashes of its
input data, the profile sections it reads, the seed, the options that change the result), stores it
with its result and checkpoints, and reuses a file only when the stored identity equals this call's;
anything else is refused with one line naming the file and the fix. A standalone command and the
grid take the same lock, a hidden ``.NAME.lock`` beside the job's output, so two runs of one job never
compute it twice: the second waits (or the grid moves on) and then finds the result.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasaudit.errors import NasauditError
from nasaudit.io import jsonable, read_json, write_json

if TYPE_CHECKING:
    from nasaudit.config import Profile
    from nasaudit.data.datasets import ImageDataset

logger = logging.getLogger(__name__)

IDENTITY = "identity"  # the key under which a result, manifest or checkpoint stores its run's identity


def fingerprint(job: str, **parts: Any) -> dict[str, Any]:
    """The identity of one run of ``job``: its parts as plain JSON values (dataclasses, paths, numpy)."""
    return jsonable({"job": job, **parts})


def profile_sections(profile: Profile, names: Iterable[str]) -> dict[str, Any]:
    """The named sections of ``profile`` (``a.b`` for a nested table), as plain data.

    A job's identity holds only the sections it reads (a registered plugin declares them with
    ``uses=``), so editing an unrelated section (a table's trial count) leaves finished jobs valid.
    """
    sections: dict[str, Any] = {}
    for name in names:
        value: Any = profile
        for part in name.split("."):
            value = getattr(value, part)
        sections[name] = value
    return jsonable(sections)


def data_identity(data: ImageDataset, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The data a job computes on, by the hashes of its inputs (cheap to recompute from files).

    ``provenance`` (``nas.base.search_data``) names the clean split and the poison and defended files
    applied to it; without it ``data`` is the clean data.
    """
    provenance = provenance or {}
    return {
        "dataset": data.name,
        "clean_sha256": provenance.get("clean_sha256", data.train.sha256),
        "poison_sha256": provenance.get("poison_sha256"),
        "defended_sha256": provenance.get("defended_sha256"),
    }


def check_same_run(path: Path, recorded: Any, expected: Mapping[str, Any]) -> None:
    """Refuse to reuse ``path`` unless ``recorded`` (what the file says made it) is this call's identity."""
    if recorded == expected:
        return
    if isinstance(recorded, Mapping):
        keys = [k for k in sorted(set(expected) | set(recorded)) if recorded.get(k) != expected.get(k)]
        what = f"its {', '.join(keys)} differ{'s' if len(keys) == 1 else ''} from this call's"
    else:
        what = "it does not record which run made it (an older nasaudit or another tool wrote it)"
    raise NasauditError(
        f"{path}: made by another run ({what}); delete it to recompute, or choose another output"
    )


def check_record(path: Path, record: Any, expected: Mapping[str, Any], key: str | None = IDENTITY) -> None:
    """Refuse to reuse ``path`` unless ``record`` (what was read from it) names this call's run.

    The identity is stored under ``key``, as a dict or as its JSON text (what a torch file holds), or,
    with ``key`` None, as ``expected``'s own keys at the top level of a state file that carries them.
    The one reading behind every reuse of a result, checkpoint, log or state file.
    """
    recorded = None
    if isinstance(record, Mapping):
        recorded = {k: record.get(k) for k in expected} if key is None else record.get(key)
    if isinstance(recorded, str):
        try:
            recorded = json.loads(recorded)
        except json.JSONDecodeError:
            recorded = None
    check_same_run(path, recorded, expected)


def reuse(path: Path, expected: Mapping[str, Any], on_delete: str) -> dict[str, Any] | None:
    """The finished result at ``path`` (a JSON record storing its identity) if this run made it.

    None when there is no such file; a damaged file or one made by another run is a one-line error
    (``on_delete`` says what a rerun does once the file is deleted).
    """
    if not Path(path).is_file():
        return None
    record = read_json(path, on_delete)
    check_record(path, record, expected)
    return record


def claim(path: Path, expected: Mapping[str, Any], fresh: bool = False) -> None:
    """Make ``path`` (a job folder's claim file) name the run whose resumable state the folder holds.

    A folder claimed by another run is refused before any of its checkpoints is read; an unclaimed
    one is claimed. The claim covers every file the job leaves in the folder, so its checkpoints,
    logs and partial results need no fingerprint of their own to be trusted by this run. With
    ``fresh`` the claim is the folder's first file: an unclaimed folder holding files is refused
    (nothing proves whose they are), and a claim with nothing beside it (its run stopped before
    writing anything, say at a bad setting) is taken over, as it protects no state.
    """
    path = Path(path)
    others = _beside(path) if fresh else []
    if path.is_file() and (others or not fresh):
        check_same_run(path, read_json(path, "lets the next run claim the folder afresh"), expected)
        return
    if others:
        raise NasauditError(
            f"{path.parent} holds files no run claims ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}; an older nasaudit or another tool wrote them); "
            "delete them or choose an empty or new output folder"
        )
    write_json(path, dict(expected))


def _beside(path: Path) -> list[str]:
    """The names of the files in ``path``'s folder other than it and lock files."""
    if not path.parent.is_dir():
        return []
    return sorted(p.name for p in path.parent.iterdir() if p != path and not _is_lock(p))


def _is_lock(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".lock")


@contextmanager
def job_lock(output: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of the job that writes ``output`` for the block: ``.NAME.lock`` beside it.

    The kernel drops the lock when the holder dies, so a killed run never blocks the next. With
    ``wait`` a second process says once that it waits and then blocks; without it (the grid's
    workers) the block gets False at once and holds nothing.
    """
    lock = _lock_path(output)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            logger.warning(f"nasaudit: another process is making {output}; waiting for it")  # on stderr
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_path(output: Path) -> Path:
    return Path(output).parent / f".{Path(output).name}.lock"


def is_locked(output: Path) -> bool:
    """Whether a live process holds the lock of the job writing ``output`` right now."""
    if not _lock_path(output).exists():
        return False
    with job_lock(output, wait=False) as held:
        return not held
