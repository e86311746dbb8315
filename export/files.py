"""Writing an export's files so a failure never leaves one that looks whole: fsync before rename, and every
OSError (disk full, permission, I/O) turned into one ExportError that names the file."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path


class ExportError(ValueError):
    """An export refused or failed for a reason its message names (the output folder, a file being written)."""


def fsync_write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_error(path: Path, e: OSError) -> ExportError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there"
        except OSError:
            free = "free space unknown"
        return ExportError(f"{path}: no space left on the device ({free}); nothing was written to --out")
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
    return ExportError(f"{path}: cannot write{where}: {e.strerror or e}; nothing was written to --out")


@contextlib.contextmanager
def writing(path: Path):
    """An OSError (disk full, permission, I/O) while writing `path` becomes one ExportError naming it."""
    try:
        yield
    except OSError as e:
        raise write_error(path, e) from e


def fsync_tree(folder: Path) -> None:
    """Every file in `folder`, then the folder itself, on disk: the bundle survives a power cut once renamed."""
    for p in folder.iterdir():
        if p.is_file():
            with writing(p):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | Path, data: bytes) -> str:
    """Write `data` to a temporary name beside `path`, fsync it, rename it over `path` and fsync the folder, so
    `path` is either what it was or the whole new file; returns the sha256 (hex) of `data`. An OSError becomes
    an ExportError naming the file, and the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path):
        try:
            fsync_write(tmp, lambda f: f.write(data))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest()
