"""Files: atomic writes (a kill at any moment leaves the old version or the new one, never torn),
folder locks, and bounded reads of regular files."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file owner-only; give it the mode a plain open() would (0666 & ~umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class FolderLock:
    """An exclusive ``flock`` on ``lock_file`` for the life of a ``with`` block (a sweep folder, a
    run folder). The file holds the owner's pid, so a refusal can name it. The kernel drops the
    lock when its holder dies, however it dies, so a killed owner never blocks a rerun.

    ``busy`` says what holds the lock ("another sweep is running on this folder"), ``fix`` what
    to do; a refusal raises ``error`` (the caller's one-line error class).
    """

    def __init__(self, lock_file: Path, busy: str, fix: str, error: type[Exception]) -> None:
        self.path = Path(lock_file)
        self.busy, self.fix, self.error = busy, fix, error
        self.fh: io.TextIOWrapper | None = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until __exit__)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            who = fh.read(100).strip() or "another process"
            fh.close()
            raise self.error(f"{self.path.parent}: {self.busy} ({who}); {self.fix}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.seek(0)
            self.fh.truncate()
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def remove_stale_temporaries(folder: Path, names: tuple[str, ...]) -> None:
    """Delete the temporaries that :func:`atomic_write` left in ``folder`` for ``names`` when a
    write was killed (``.checkpoint.pt.XXXX.tmp``). Call it holding the folder's lock: then no
    live writer owns them."""
    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def read_regular_file(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file (not a FIFO, which would block, nor
    a device such as /dev/zero, which never ends) of at most ``limit`` bytes.

    Raises ValueError with a reason in words for anything else; OSError as ``open`` does.
    """
    # O_NONBLOCK: a FIFO swapped in after the check must not block the open.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ValueError(kind)
        if limit is not None and info.st_size > limit:
            raise ValueError(f"{info.st_size:,} bytes, more than the {limit:,} allowed")
        data = fh.read() if limit is None else fh.read(limit + 1)
    if limit is not None and len(data) > limit:  # it grew while read
        raise ValueError(f"more than the {limit:,} bytes allowed")
    return data
