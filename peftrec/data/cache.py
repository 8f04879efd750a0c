"""The local data cache: checksums, atomic installs and verified downloads."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from peftrec.data.errors import DataError

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else `$PEFTREC_CACHE`, else `~/.cache/peftrec`."""
    root = cache_dir or os.environ.get("PEFTREC_CACHE") or Path.home() / ".cache" / "peftrec"
    return Path(root).expanduser()


def checksum(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, algorithm: str, expected: str) -> None:
    """Raise DataError unless the file's `algorithm` digest is `expected`."""
    if not path.is_file():
        raise DataError(f"{path}: file missing")
    actual = checksum(path, algorithm)
    if actual != expected.lower():
        raise DataError(
            f"{path}: {algorithm} checksum mismatch (expected {expected}, got {actual}); "
            "the file is corrupt or a different version: delete it and fetch again"
        )


def install_folder(dest: Path, sources: Mapping[str, Path], sha256: Mapping[str, str]) -> Path:
    """Copy `sources` (name -> file) into the folder `dest`, all or nothing.

    The files are copied into a temporary folder next to `dest`, verified, and the folder is
    then renamed to `dest` in one step, so an interrupted copy never leaves a partial `dest`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for name, source in sources.items():
            shutil.copyfile(source, tmp / name)
            verify(tmp / name, "sha256", sha256[name])
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # a folder there is a concurrent install of the same files
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download(url: str, dest: Path, md5: str) -> Path:
    """Download `url` to `dest` if its md5 is `md5`; `dest` appears only when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}-", dir=dest.parent)
    tmp = Path(name)
    try:
        logger.info("Downloading %s", url)
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            shutil.copyfileobj(r, f)
        verify(tmp, "md5", md5)
        tmp.chmod(0o644)  # mkstemp makes it private
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def download_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return response.read().decode("utf-8", errors="replace")
