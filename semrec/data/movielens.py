"""MovieLens 1M and 32M from GroupLens.

1m: `ml-1m.zip` with `ratings.dat` (`UserID::MovieID::Rating::Timestamp`) and `movies.dat`
(`MovieID::Title::Genres`, ISO-8859-1). In `data.local_dir` the zip, the extracted `.dat` files
(plain or gzipped), or the reconstructed `ratings_reconstructed.csv.gz` (CSV
`UserID,MovieID,Rating,Timestamp`, some timestamps empty) beside `movies.dat` are accepted.

32m: `ml-32m.zip` with `ratings.csv` (`userId,movieId,rating,timestamp`, 32 million rows) and
`movies.csv`. The ratings are read with polars' lazy CSV scanner from the extracted file, with
32-bit ids, so preparation stays within a few GiB.

The zip of either release is unpacked into the cache once (`ml-1m/`, `ml-32m/`); a later run reads
the unpacked files without opening the zip.

Every rating is an interaction unless `data.positive_rating_min` says otherwise. Item text:
the title, the year and the genres; the first listed genre is the one-level `category_path`
(MovieLens lists genres alphabetically; `genres` keeps them all).
"""

import io
import re
from pathlib import Path

import polars as pl

from semrec.data.download import RawFile, RawFiles, check_last_line, extract_members, find_local, open_text
from semrec.data.source import SourceData, clean_text, compose_text, frame_from_rows
from semrec.errors import SemrecError
from semrec.report import Reporter

BASE = "https://files.grouplens.org/datasets/movielens"
ARCHIVES = {
    # md5 as published by GroupLens in ml-1m.zip.md5
    "1m": RawFile("ml-1m.zip", f"{BASE}/ml-1m.zip", md5="c4d9eecfca2ab87c1945afe126590906"),
    "32m": RawFile("ml-32m.zip", f"{BASE}/ml-32m.zip", md5_url=f"{BASE}/ml-32m.zip.md5"),
}
_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_KEY = pl.Int32
RATINGS_DAT = "UserID::MovieID::Rating::Timestamp"
MOVIES_DAT = "MovieID::Title::Genres"
RECONSTRUCTED_CSV = "UserID,MovieID,Rating,Timestamp"
RATINGS_CSV = "userId,movieId,rating,timestamp"
MOVIES_CSV = "movieId,title,genres"


def load(data, *, root: Path, reporter: Reporter) -> SourceData:
    """The release `data.variant` names; `root` is the project folder."""
    variant = data.variant or "1m"
    if variant not in ARCHIVES:
        raise SemrecError(f"data.variant = {variant!r} is not a MovieLens release", f"choose one of: {', '.join(ARCHIVES)}")
    files = RawFiles.from_settings(data, f"movielens-{variant}", root=root, reporter=reporter)
    loader = load_1m if variant == "1m" else load_32m
    return loader(files)


# -- 1M ---------------------------------------------------------------------------------------


def load_1m(files: RawFiles) -> SourceData:
    if files.local_dir is not None and find_local(ARCHIVES["1m"], files.local_dir) is None:
        return _load_1m_extracted(files)
    ratings, movies = unpacked(files, "1m", ("ratings.dat", "movies.dat"))
    interactions = read_ratings_dat(ratings.read_bytes())
    return SourceData("movielens 1m", read_movies_dat(movies), interactions, unknown_items="drop")


def _load_1m_extracted(files: RawFiles) -> SourceData:
    """From files in data.local_dir instead of the zip: movies.dat, with ratings.dat or the reconstructed ratings."""
    name = "movielens 1m"
    movies = files.get(RawFile("movies.dat", None))
    ratings = files.get(RawFile("ratings.dat", None), required=False)
    if ratings is not None:
        complete(ratings, RATINGS_DAT, "::")
        interactions = read_ratings_dat(ratings.read_bytes() if ratings.suffix != ".gz" else _gunzip(ratings))
    else:
        reconstructed = files.get(RawFile("ratings_reconstructed.csv", None), required=False)
        if reconstructed is None:
            raise SemrecError(
                f"no MovieLens 1M ratings in data.local_dir ({files.local_dir})",
                "put ml-1m.zip there (https://files.grouplens.org/datasets/movielens/ml-1m.zip), "
                "or its ratings.dat and movies.dat",
            )
        interactions = read_reconstructed(reconstructed)
        name += " (reconstructed ratings)"
    return SourceData(name, read_movies_dat(movies), interactions, unknown_items="drop", notes=_null_note(interactions))


def complete(path: Path, layout: str, separator: str) -> Path:
    """`path`, after refusing a last line cut short: a plain file copied into data.local_dir in part."""
    check_last_line(path, separator=separator, fields=len(layout.split(separator)), layout=layout)
    return path


def unpacked(files: RawFiles, variant: str, names: tuple[str, ...]) -> list[Path]:
    """The named files of a release zip, unpacked into the cache on first use (a later run does not open the zip)."""
    folder = files.cache / f"ml-{variant}"
    if all((folder / name).is_file() for name in names):
        return [folder / name for name in names]
    return extract_members(files.get(ARCHIVES[variant]), names, folder, publisher="GroupLens")


def _gunzip(path: Path) -> bytes:
    import gzip

    return gzip.decompress(path.read_bytes())


def read_ratings_dat(raw: bytes) -> pl.DataFrame:
    """`UserID::MovieID::Rating::Timestamp` lines. Read with ':' as separator: the empty columns between the
    two colons are dropped (no field of ratings.dat holds a colon)."""
    try:
        frame = pl.read_csv(
            io.BytesIO(raw), separator=":", has_header=False, quote_char=None,
            schema={f"c{i}": pl.Utf8 for i in range(7)},
        )
        return frame.select(
            user_key=pl.col("c0").cast(_KEY),
            item_key=pl.col("c2").cast(_KEY),
            timestamp=pl.col("c6").cast(pl.Int64),
            rating=pl.col("c4").cast(pl.Float64),
        )
    except pl.exceptions.PolarsError as e:
        raise SemrecError(f"ratings.dat: a line is not UserID::MovieID::Rating::Timestamp ({e})") from e


def read_reconstructed(path: Path) -> pl.DataFrame:
    frame = pl.read_csv(complete(path, RECONSTRUCTED_CSV, ","), schema_overrides={"Timestamp": pl.Int64})
    missing = {"UserID", "MovieID", "Rating", "Timestamp"} - set(frame.columns)
    if missing:
        raise SemrecError(f"{path.name}: missing columns {', '.join(sorted(missing))}", "expected UserID,MovieID,Rating,Timestamp")
    return frame.select(
        user_key=pl.col("UserID").cast(_KEY),
        item_key=pl.col("MovieID").cast(_KEY),
        timestamp=pl.col("Timestamp"),
        rating=pl.col("Rating").cast(pl.Float64),
    )


def _null_note(interactions: pl.DataFrame) -> dict:
    nulls = interactions["timestamp"].null_count()
    return {"interactions_without_timestamp": nulls} if nulls else {}


def read_movies_dat(path: Path) -> pl.DataFrame:
    """movies.dat, plain or gzipped (it is ISO-8859-1)."""
    with open_text(complete(path, MOVIES_DAT, "::"), encoding="latin-1") as f:
        return parse_movies_dat(f.read(), path.name)


def parse_movies_dat(text: str, file_name: str) -> pl.DataFrame:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            raise SemrecError(f"{file_name} line {number}: expected MovieID::Title::Genres, got {line[:60]!r}")
        rows.append(movie_row(int(parts[0]), parts[1], parts[2]))
    return _movies_frame(rows)


def movie_row(movie_id: int, title: str, genres: str) -> dict:
    title = clean_text(title)
    match = _YEAR.match(title)
    name, year = (match.group(1), int(match.group(2))) if match else (title, None)
    genre_list = [g for g in genres.strip().split("|") if g and g != "(no genres listed)"]
    return {
        "item_key": movie_id,
        "title": title,
        "year": year,
        "genres": genre_list,
        "category_path": genre_list[:1],
        "text": compose_text(name, ("Year", str(year) if year else ""), ("Genres", ", ".join(genre_list))),
    }


def _movies_frame(rows: list[dict]) -> pl.DataFrame:
    return frame_from_rows(
        rows,
        {
            "item_key": _KEY, "title": pl.Utf8, "year": pl.Int64, "genres": pl.List(pl.Utf8),
            "category_path": pl.List(pl.Utf8), "text": pl.Utf8,
        },
    )


# -- 32M --------------------------------------------------------------------------------------


def load_32m(files: RawFiles) -> SourceData:
    if files.local_dir is not None and find_local(ARCHIVES["32m"], files.local_dir) is None:
        ratings, movies = files.get(RawFile("ratings.csv", None)), files.get(RawFile("movies.csv", None))
    else:
        ratings, movies = unpacked(files, "32m", ("ratings.csv", "movies.csv"))
    return SourceData("movielens 32m", read_movies_csv(movies), scan_ratings_csv(ratings), unknown_items="drop")


def scan_ratings_csv(path: Path) -> pl.LazyFrame:
    header = pl.read_csv(complete(path, RATINGS_CSV, ","), n_rows=0).columns
    missing = {"userId", "movieId", "rating", "timestamp"} - set(header)
    if missing:
        raise SemrecError(f"{path.name}: missing columns {', '.join(sorted(missing))}", "expected userId,movieId,rating,timestamp")
    return pl.scan_csv(
        path, schema_overrides={"userId": _KEY, "movieId": _KEY, "rating": pl.Float64, "timestamp": pl.Int64}
    ).select(
        user_key=pl.col("userId"), item_key=pl.col("movieId"), timestamp=pl.col("timestamp"), rating=pl.col("rating")
    )


def read_movies_csv(path: Path) -> pl.DataFrame:
    frame = pl.read_csv(complete(path, MOVIES_CSV, ","), infer_schema=False)
    missing = {"movieId", "title", "genres"} - set(frame.columns)
    if missing:
        raise SemrecError(f"{path.name}: missing columns {', '.join(sorted(missing))}", "expected movieId,title,genres")
    rows = []
    for line, record in enumerate(frame.iter_rows(named=True), 2):
        if not str(record["movieId"]).strip().isdigit():
            raise SemrecError(f"{path.name} line {line}, column 'movieId': {record['movieId']!r} is not a movie id")
        rows.append(movie_row(int(record["movieId"]), record["title"] or "", record["genres"] or ""))
    return _movies_frame(rows)
