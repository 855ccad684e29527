"""RunStore: the run directory, its append-only trial journal, checkpoints, and resume.

Every finished trial is appended to trials.jsonl and flushed to disk before the optimizer hears of it,
so a run killed at any moment loses nothing that finished.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from autocomp.errors import RunError

JOURNAL = "trials.jsonl"
CHECKPOINT = "checkpoint.json"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temporary file and rename, so readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full or read-only disk: the old file stays, the half-written one goes
        tmp.unlink(missing_ok=True)
        raise RunError(f"cannot write '{path}': {err.strerror or err}") from err


class RunStore:
    """One run directory. Holds an exclusive lock while open, released by the OS if the holder dies."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = None
        self._journal = None

    # --- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, *, space_yaml: str, run_info: dict[str, Any]) -> RunStore:
        """A new run directory; refuses to reuse one that already holds a run."""
        path = Path(path)
        if (path / "run.json").exists():
            raise RunError(f"run directory '{path}' already holds a run: resume it or choose another --name")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot create run directory '{path}': {err}") from err
        store = cls(path)
        store.lock()
        write_atomic(path / "space.yaml", space_yaml)
        store.write_json("run.json", run_info)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunStore:
        """An existing run directory, locked; a directory without run.json is refused."""
        path = Path(path)
        if not (path / "run.json").is_file():
            raise RunError(f"'{path}' is not a run directory (no run.json)")
        store = cls(path)
        store.lock()
        return store

    def lock(self) -> None:
        """Take the directory's exclusive lock, or fail at once if another process holds it."""
        self._lock = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RunError(f"run directory '{self.path}' is in use by another autocomp process") from None

    def close(self) -> None:
        """Close the journal and release the lock."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock is not None:
            self._lock.close()  # closing releases the flock
            self._lock = None

    # --- files -----------------------------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        """The JSON file `name` of the run directory, None if it does not exist."""
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as err:
            raise RunError(f"{self.path / name}: not valid JSON ({err})") from err

    def write_json(self, name: str, obj: Any) -> None:
        """Write `obj` as the JSON file `name` of the run directory, atomically."""
        write_atomic(self.path / name, json.dumps(obj, indent=1, default=_jsonable) + "\n")

    # --- journal ---------------------------------------------------------------------------------
    def trials(self) -> list[dict[str, Any]]:
        """Every finished trial.

        A last line cut mid-write (a killed driver) is ignored, and cut from the file when this store holds
        the run's lock (so the next append starts on a clean line).
        """
        path = self.path / JOURNAL
        if not path.exists():
            return []
        data = path.read_bytes()
        complete, _, torn = data.rpartition(b"\n")
        if torn and self._lock is not None:  # only the lock holder may repair; a reader just skips it
            with open(path, "r+b") as f:  # cut the torn tail so the next append starts a clean line
                f.truncate(len(complete) + 1 if complete else 0)
        records = []
        for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RunError(f"{path}:{number}: corrupt journal line ({err}); fix or remove it") from err
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Append one trial record to the journal and fsync it; on a failed write the journal keeps whole lines."""
        if self._journal is None:
            self._journal = open(self.path / JOURNAL, "ab")  # noqa: SIM115 - kept open for appends
        end = self._journal.seek(0, os.SEEK_END)
        try:
            self._journal.write(json.dumps(record, default=_jsonable).encode() + b"\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())
        except OSError as err:  # disk full: cut what got through, so the journal ends on a whole line
            self._journal.close()
            self._journal = None
            with open(self.path / JOURNAL, "r+b") as f:
                f.truncate(end)
            raise RunError(f"cannot append to '{self.path / JOURNAL}': {err.strerror or err}; every trial "
                           f"before this one is kept: free space, then `autocomp resume {self.path}`") from err

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Save the optimizer's state, replacing the previous checkpoint."""
        self.write_json(CHECKPOINT, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last saved checkpoint, None if there is none."""
        return self.read_json(CHECKPOINT)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
