"""Atomic file writes: a crash or a full disk never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from transferkit.errors import CheckpointError

__all__ = ["atomic_write", "write_json", "write_text", "append_jsonl"]


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success fsync and rename it over ``path``.

    On any error the temporary file is removed and the previous ``path`` (if any) is left intact.
    A full disk becomes a CheckpointError that names the file and the fix.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"no space left on the device while writing {target}; the previous version was kept. "
                "Free some disk space or choose another --out folder, then resume the run"
            ) from None
        raise CheckpointError(f"could not write {target}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    with atomic_write(path) as tmp:
        writer(tmp)


def write_text(path: str | Path, text: str) -> None:
    _write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (rewritten atomically: the log is small, and never half a line)."""
    p = Path(path)
    old = p.read_text(encoding="utf-8") if p.exists() else ""
    write_text(p, old + json.dumps(record, ensure_ascii=False, default=str) + "\n")
