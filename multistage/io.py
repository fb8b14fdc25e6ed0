"""Atomic file writing, the one primitive every writer in the project uses.

:func:`atomic_path` yields a temporary path in the target's folder (so the final ``os.replace`` is atomic on the
same filesystem) and renames it over the target only when the block succeeds; on an error the temporary file is
removed and any previous target is left as it was. Readers (DVC, a resuming run) never see half a file. The
temporary file gets the permissions a plain ``open`` would give (``mkstemp`` alone makes it 0600).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; rename it to ``final_path`` on success, delete it otherwise.

    The temporary name keeps the final suffix, so writers that append one (numpy's ``.npy``) leave it alone.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=f".{final_path.stem}.", suffix=f".tmp{final_path.suffix}", dir=final_path.parent
    )
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~current_umask())
    try:
        yield temporary
        os.replace(temporary, final_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
