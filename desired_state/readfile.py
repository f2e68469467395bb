"""Reading a file that the desired state names (the topology itself, a secret), bounded.

Only a regular file is read (a FIFO would block for ever, a device such as /dev/zero never ends), and
never more than the limit plus one byte, whatever the file's size claims.
"""

from __future__ import annotations

import os
import stat

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class UnreadableFile(OSError):
    """Not a regular file, or larger than allowed; the message says which."""


def read_bounded(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file at ``path``: UnreadableFile if it is something else or holds more
    than ``limit`` bytes; OSError (FileNotFoundError, PermissionError, ...) as the system says."""
    # O_NONBLOCK: opening a FIFO for reading does not wait for a writer; it is refused just below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise UnreadableFile(f"{os.fspath(path)} is {kind}, not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise UnreadableFile(f"{os.fspath(path)} is larger than {limit:,} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
