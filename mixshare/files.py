"""Run files: atomic writes, checkpoints, the history CSV, TensorBoard scalars and output folders.

Every file is written through a temporary ``<name>.tmp<pid>`` in the same
folder and a rename, so a reader never sees half a file; temporaries left by a
killed process are removed when a run next opens the folder. Checkpoints are
loaded with ``weights_only=True`` (plain tensors and containers, no code), and
anything that is not a readable checkpoint raises :class:`CheckpointError`
with one line naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import warnings
from typing import Iterator, Optional

import torch

CHECKPOINT = "checkpoint.pt"
TENSORBOARD = "tensorboard"  # the run folder's TensorBoard log folder (see ScalarLog)
CHECKPOINT_KEYS = ("config", "model", "num_classes")
_TEMPORARY = re.compile(r"\.tmp(\d+)$")


class CheckpointError(ValueError):
    """A file that is not a readable mixshare checkpoint, or one that does not fit the run."""


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes via a temporary file in the same folder and a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
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
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: {reason[:300]})") from None
    if not isinstance(state, dict) or not all(key in state for key in CHECKPOINT_KEYS):
        found = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a mixshare checkpoint: expected the keys {', '.join(CHECKPOINT_KEYS)}, "
                              f"found {found}")
    return state


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
    """Removes ``*.tmp<pid>`` files of processes that are gone; returns their names."""
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _TEMPORARY.search(name)
        path = os.path.join(folder, name)
        if match and os.path.isfile(path) and not _alive(int(match.group(1))):
            os.remove(path)
            removed.append(name)
    return removed


@contextlib.contextmanager
def output_folder(path: str) -> Iterator[str]:
    """The run's output folder: created if missing (an existing file there is refused), cleared of
    stale temporaries; removed again if the run fails before writing anything into it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output folder {path} is an existing file; choose another --out")
    created = not os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    remove_stale_temporaries(path)
    try:
        yield path
    except BaseException:
        if created and os.path.isdir(path) and not os.listdir(path):
            shutil.rmtree(path, ignore_errors=True)
        raise
