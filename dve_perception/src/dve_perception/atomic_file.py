"""Write files so that readers and crashes see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file next to `path` for binary writing; on success it replaces `path`.

    The temporary file is hidden (`.<name>.<random>.tmp`) and in the same directory, so the final
    `os.replace` is atomic. It is created with mode 0666 and the umask decides, as for any new
    file (`tempfile.mkstemp` would make every output 0600). If the block raises, the temporary
    file is removed and `path` is untouched.

    Args:
        path: the file to write; its directory must exist (OSError otherwise).
        durable: fsync the data before the rename and the directory after it, so the new file
            survives a power cut; caches that can be recomputed skip it.

    Raises:
        OSError: the file cannot be created, written or renamed.
    """
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            if durable:
                os.fsync(file.fileno())  # data on disk before the rename makes it visible
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:
        _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable on POSIX; best effort (no O_DIRECTORY on Windows, some FS refuse).
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
