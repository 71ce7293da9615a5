"""Run files: atomic writes, checkpoints, the history CSV, TensorBoard scalars and output folders.

Every file is written through a temporary ``.<name>.<pid>.mixshare-tmp`` in
the same folder and a rename, so a reader never sees half a file; temporaries
of that pattern left by a process that is gone are removed when a run next
opens the folder (no other file is ever removed). An output folder is locked
while a command writes it (:func:`folder_lock`). Checkpoints are loaded with
``weights_only=True`` (plain tensors and containers, no code), and anything
that is not a readable checkpoint raises :class:`CheckpointError` with one
line naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import socket
import sys
import time
import warnings
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # not POSIX: the lock falls back to the recorded owner's pid
    fcntl = None

import torch

# A run folder's files.
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
HISTORY = "history.csv"
RUN_CONFIG = "config.json"  # the run's config, written when its training starts
TENSORBOARD = "tensorboard"  # the run folder's TensorBoard log folder (see ScalarLog)
PLOTS = ("training_curves.png", "reliability.png", "encoder_profiles.png", "classifier_profiles.png",
         "conditional_variance.png")
RUN_RECORDS = (CHECKPOINT, METRICS, HISTORY)  # a folder holding one of these holds a run
RUN_FILES = RUN_RECORDS + (RUN_CONFIG, TENSORBOARD) + PLOTS  # what a run writes; --overwrite removes these
LOCK = ".mixshare.lock"
CHECKPOINT_KEYS = ("config", "model", "num_classes")
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.mixshare-tmp$")


class CheckpointError(ValueError):
    """A file that is not a readable mixshare checkpoint, or one that does not fit the run."""


class FolderInUse(OSError):
    """Another live process holds the output folder's lock."""


def temporary_path(path: str) -> str:
    """The temporary name a write of ``path`` goes through: ``.<name>.<pid>.mixshare-tmp`` beside it."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{os.getpid()}.mixshare-tmp")


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes via a temporary file in the same folder and a rename."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The checkpoint at ``path`` (``weights_only=True``: no arbitrary code), checked to be a
    mapping with the keys a mixshare run writes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - empty, truncated, not a torch file, or refused objects
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: "
                              f"{_load_failure(error)})") from None
    if not isinstance(state, dict) or not all(key in state for key in CHECKPOINT_KEYS):
        found = sorted(map(str, state))[:10] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a mixshare checkpoint: expected the keys {', '.join(CHECKPOINT_KEYS)}, "
                              f"found {found}")
    return state


def _load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words of this project's (torch's own message
    suggests loading the file with ``weights_only=False``, which would run code from an untrusted file)."""
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        return ("it holds objects other than tensors and plain containers, which a checkpoint never does; "
                "such a file is not loaded")
    return "empty, truncated, or not a file torch.save wrote"


def load_weights(model: torch.nn.Module, weights, path: str) -> None:
    """``model.load_state_dict(weights)``, with a mismatch (another model size, M or dataset) as one line."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else (first[0] if first else "")
        raise CheckpointError(f"{path} holds weights of another model (size, M or number of classes): "
                              f"{detail[:300]}") from None


def write_history(path: str, rows: list[dict]) -> None:
    """The rows as CSV; the columns are every key of the rows in order of first appearance (a row without
    one of them, e.g. from a checkpoint written before a column existed, leaves its cell empty)."""
    if not rows:
        return
    fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fieldnames, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


class ScalarLog:
    """TensorBoard scalars of the history rows, in ``<run folder>/tensorboard`` (one writer per run).

    Each :meth:`write` logs every numeric column of a history row but ``epoch``
    under its history.csv name, at step ``epoch``. The writer
    (``torch.utils.tensorboard.SummaryWriter``) opens at the first write, so a
    run that fails before its first epoch leaves no folder behind. Without the
    ``tensorboard`` package nothing is written (history.csv holds the same
    numbers). ``purge_step``: a resumed run's first epoch; events of that step
    and later from before the resume are discarded by TensorBoard.
    """

    def __init__(self, run_folder: str, purge_step: Optional[int] = None):
        self.folder = os.path.join(run_folder, TENSORBOARD)
        self.purge_step = purge_step
        self._writer = None
        self._unavailable = False

    def _open(self):
        if self._writer is None and not self._unavailable:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # no tensorboard package: history.csv only
                self._unavailable = True
                return None
            except Exception as error:  # noqa: BLE001 - a broken install must not stop training
                warnings.warn(f"TensorBoard unavailable ({type(error).__name__}: {error}); writing history.csv only")
                self._unavailable = True
                return None
            self._writer = SummaryWriter(log_dir=self.folder, purge_step=self.purge_step)
        return self._writer

    @property
    def available(self) -> bool:
        return self._open() is not None

    def write(self, row: dict, step_key: str = "epoch") -> None:
        writer = self._open()
        if writer is None:
            return
        step = int(row[step_key])
        for key, value in row.items():
            if key != step_key and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, float(value), step)
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Removes the temporaries (``.<name>.<pid>.mixshare-tmp``) of processes that are gone; returns
    their names. No other file is touched."""
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _TEMPORARY.match(name)
        path = os.path.join(folder, name)
        if match and os.path.isfile(path) and not _alive(int(match.group(1))):
            os.remove(path)
            removed.append(name)
    return removed


def _owner_text(record: Optional[dict]) -> str:
    if not record:
        return "another process"
    return (f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')} "
            f"({record.get('command', '?')})")


def _read_record(fd: int) -> Optional[dict]:
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0).decode())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[dict]:
    """Holds ``folder``'s lock file (``.mixshare.lock``) while the block runs, or raises
    :class:`FolderInUse` naming its owner.

    The file records the owner (pid, host, start time, command) and is held with ``flock``,
    which the system releases when the owner dies: a lock file left by a killed process is taken
    over. Where ``flock`` is unsupported, a record naming a live process of this host counts as
    held. The file is removed when the block ends.
    """
    path = os.path.join(folder, LOCK)
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)[:300]}
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _in_use(folder, _read_record(fd)) from None
                except OSError:  # no flock on this file system: the record decides
                    _refuse_live_record(folder, _read_record(fd))
            else:
                _refuse_live_record(folder, _read_record(fd))
            # Another process may have removed the file (and made a new one) between open and flock.
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield record
    finally:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def _in_use(folder: str, owner: Optional[dict]) -> FolderInUse:
    return FolderInUse(f"output folder {folder} is in use by {_owner_text(owner)} "
                       f"(lock file {LOCK}); wait for it to end or choose another --out")


def _refuse_live_record(folder: str, owner: Optional[dict]) -> None:
    if (owner and owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int)
            and owner["pid"] != os.getpid() and _alive(owner["pid"])):
        raise _in_use(folder, owner)


def run_records(folder: str) -> list[str]:
    """The files of :data:`RUN_RECORDS` in ``folder``: non-empty when it holds a run."""
    return [name for name in RUN_RECORDS if os.path.exists(os.path.join(folder, name))]


def remove_run(folder: str) -> list[str]:
    """Removes the files a run writes (:data:`RUN_FILES`) from ``folder``; returns their names. A file
    of any other name is left alone."""
    removed = []
    for name in RUN_FILES:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


@contextlib.contextmanager
def output_folder(path: str, lock: bool = True) -> Iterator[str]:
    """The run's output folder: created if missing (an existing file there is refused), locked
    (:func:`folder_lock`; ``lock=False`` for a process that shares the folder with its locking
    parent, e.g. a DDP rank but the first), cleared of stale temporaries; removed again if the
    command fails before writing anything into it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output folder {path} is an existing file; choose another --out")
    created = not os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    try:
        with folder_lock(path) if lock else contextlib.nullcontext():
            remove_stale_temporaries(path)
            yield path
    except BaseException:
        if created and os.path.isdir(path) and not os.listdir(path):
            shutil.rmtree(path, ignore_errors=True)
        raise
