"""Atomic file writes: a crash or a full disk never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from transferkit.errors import CheckpointError

__all__ = ["atomic_write", "write_json", "write_text", "append_jsonl", "portable_paths"]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    # mkstemp creates 0600 files; run folders are shared between people, so give the final file the
    # mode a plain open() would have given it. Reading the umask means setting it, once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a folder cannot be opened on Windows, so skip there."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _as_checkpoint_error(target: Path, exc: OSError) -> CheckpointError:
    if exc.errno in _NO_SPACE:
        return CheckpointError(
            f"no space left on the device while writing {target}; the previous version was kept. "
            "Free some disk space or choose another --out folder, then resume the run"
        )
    return CheckpointError(f"could not write {target}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success fsync and rename it over ``path``.

    On any error the temporary file is removed and the previous ``path`` (if any) is left intact.
    A full disk (while creating, writing, syncing or renaming) becomes a CheckpointError that names
    the file and the fix; so does any other OSError.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:  # no inode left, read-only folder ...: same clear error as a failed write
        raise _as_checkpoint_error(target, exc) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _as_checkpoint_error(target, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    with atomic_write(path) as tmp:
        writer(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (rewritten atomically: the log is small, and never half a line)."""
    p = Path(path)
    old = p.read_text(encoding="utf-8") if p.exists() else ""
    write_text(p, old + json.dumps(record, ensure_ascii=False, default=str) + "\n")


def portable_paths(data: Any, roots: Mapping[str, str | os.PathLike[str]]) -> Any:
    """``data`` with every absolute path under one of ``roots`` rewritten relative to it.

    ``roots`` maps a label to a folder, e.g. ``{"$TRANSFERKIT_DATASETS": datasets, "": repo}``: a string
    equal to or under that folder becomes ``"<label>/<relative path>"`` (the plain relative path for an
    empty label). Strings inside other text (``"Data: `/x/y`"``) are rewritten too. Committed result files
    use this so they hold no path of the machine that produced them and read the same everywhere.
    Longer roots are tried first, so a repository inside the datasets folder (or the reverse) maps right.
    """
    folders = sorted(((os.path.abspath(os.fspath(path)), label) for label, path in roots.items()),
                     key=lambda item: -len(item[0]))

    def rewrite(text: str) -> str:
        for folder, label in folders:
            # the folder itself (followed by a separator, or by anything that cannot continue a name)
            pattern = re.escape(folder.rstrip("/")) + r"(/|(?![\w.\-]))"
            text = re.sub(pattern, lambda m: (f"{label}/" if label else "") if m.group(1) else (label or "."), text)
        return text

    if isinstance(data, str):
        return rewrite(data)
    if isinstance(data, Mapping):
        return {key: portable_paths(value, roots) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [portable_paths(value, roots) for value in data]
    return data
