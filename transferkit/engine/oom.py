"""Out of accelerator memory -> one clear TransferKitError that says which flag to turn down.

A CUDA out-of-memory error is a resource limit, not a bug: the user needs the batch size that did
not fit and a smaller one to try, not a 60-line traceback. Wrap the code that runs the model::

    with oom_guard(batch_size=cfg.engine.batch_size, what="training"):
        ...

Only out-of-memory errors are converted; everything else passes through untouched.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from transferkit.errors import TransferKitError

__all__ = ["OutOfMemory", "is_out_of_memory", "out_of_memory_error", "oom_guard"]

# Older PyTorch and non-CUDA backends (MPS, XPU) report OOM as a plain RuntimeError with these words.
_OOM_WORDS = ("out of memory", "cuda error: out of memory", "mps backend out of memory")


class OutOfMemory(TransferKitError):
    """The accelerator ran out of memory; the message suggests smaller settings."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError and for RuntimeErrors that report running out of device memory."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):  # the same class as torch.OutOfMemoryError
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc).lower() for word in _OOM_WORDS)


def out_of_memory_error(exc: BaseException, batch_size: int, what: str = "training") -> OutOfMemory:
    """The user-facing error for an out-of-memory ``exc`` raised while running ``what`` at ``batch_size``."""
    smaller = max(1, batch_size // 2)
    hint = (
        f"try --batch-size {smaller}" if batch_size > 1
        else "the batch size is already 1: try a smaller --input-size or backbone, or --device cpu"
    )
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutOfMemory(
        f"out of GPU memory during {what} with batch size {batch_size}; {hint} "
        f"(and close other programs using the GPU). Details: {detail[:200]}"
    )


def _release_cached_memory() -> None:
    """Give cached blocks back so the process (or the next attempt) starts from a clean allocator."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def oom_guard(batch_size: int, what: str = "training") -> Iterator[None]:
    """Turn an out-of-memory error raised inside the block into :class:`OutOfMemory`.

    Args:
        batch_size: The batch size in use (named in the message; half of it is suggested).
        what: What was running, e.g. ``"training"``, ``"evaluation"``, ``"prediction"``.

    Raises:
        OutOfMemory: (a TransferKitError, so the CLI prints one line and exits 2).
    """
    try:
        yield
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        error = out_of_memory_error(exc, batch_size, what)
        # Drop the traceback's frames (they hold the batch's tensors) before freeing the cache.
        exc.__traceback__ = None
        del exc
        _release_cached_memory()
        raise error from None
