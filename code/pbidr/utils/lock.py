"""A lock file holding the owner's pid, so two processes never write into the same folder.

The lock appears atomically with its content (written to a temporary file, then hard-linked into
place), so a reader never sees an empty lock. A lock whose process is gone (killed, crashed) is
stale and is taken over.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from pbidr.errors import PbidrError
from pbidr.utils.outputs import pid_alive


def lock_owner(path: str | os.PathLike) -> int | None:
    """The pid recorded in the lock at ``path`` if that process is alive (on this host), else None."""
    try:
        text = Path(path).read_text().split()
        pid, host = int(text[0]), (text[1] if len(text) > 1 else socket.gethostname())
    except (OSError, ValueError, IndexError):
        return None
    if host != socket.gethostname():
        return pid  # another machine's process: we cannot tell, so assume it runs
    return pid if pid == os.getpid() or pid_alive(pid) else None


class PidLock:
    """``with PidLock(folder / ".lock", what):`` holds the lock for the block."""

    def __init__(self, path: str | os.PathLike, what: str = "another pbidr process"):
        self.path = Path(path)
        self.what = what
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    owner = lock_owner(self.path)
                    if owner == os.getpid():
                        raise PbidrError(f"{self.path.parent}: already locked by this process") from None
                    if owner is not None:
                        raise PbidrError(f"{self.path.parent}: {self.what} (pid {owner}) is running in this folder; "
                                         f"wait for it to finish or stop it (lock file {self.path})") from None
                    # stale: its process is gone; take it over
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
            raise PbidrError(f"{self.path}: could not take the lock (another process keeps taking it)")
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        if self.held:
            if lock_owner(self.path) == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "PidLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
