"""Writing files and folders so that a reader sees the old version or the new one, never half.

Every file peftrec writes for later use (configs, metrics, model folders, checkpoint pointers,
benchmark results) goes through these two functions. Files get the permissions of an ordinary
file (``0o666`` less the umask), so a service running as another user can read a saved model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, path)


def write_folder_atomic(folder: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with ``fill(tmp)`` next to ``folder``, then swap it into place.

    A crash or an exception inside ``fill`` leaves any previous ``folder`` as it was. The new
    folder and everything in it get ordinary permissions (``mkdtemp`` and safetensors' writer
    make theirs private).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(tmp)
        mask = umask()
        for path in [tmp, *tmp.rglob("*")]:
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def replace_folder(new: Path, target: Path) -> None:
    """Swap ``new`` into place of ``target``; the old folder is removed only once
    ``new`` is there."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
