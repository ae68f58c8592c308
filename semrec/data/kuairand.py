"""KuaiRand (Gao et al., CIKM 2022) from its official Zenodo archive: Pure (default) or 1K.

The archive `KuaiRand-<Variant>.tar.gz` holds `data/log_standard_4_08_to_4_21_<v>.csv`,
`data/log_standard_4_22_to_5_08_<v>.csv` (user_id, video_id, date, hourmin, time_ms, is_click,
...) and `data/video_features_basic_<v>.csv` (video_id, author_id, video_type, upload_dt,
upload_type, visible_status, video_duration, server_width, server_height, music_id, music_type,
tag). The three files are unpacked once into the cache and read with polars' lazy scanner.

Interactions: the two standard-recommendation logs, in that order (the randomly exposed videos of
`log_random_*` are left out: they are an intervention, not the users' feed). A row is a positive
when `is_click == 1`; its time is `time_ms` (stored in seconds; ties, including those within the
same second, keep file order). The release has no captions, so an item's text is built from its
basic features: type, upload type and date, duration, tags, author and music ids. The first tag
is the one-level `category_path`.
"""

from pathlib import Path

import polars as pl

from semrec.data.download import RawFile, RawFiles, check_last_line, extract_members
from semrec.data.source import SourceData
from semrec.errors import SemrecError
from semrec.report import Reporter

ZENODO = "https://zenodo.org/records/10439422/files"
VARIANTS = {"pure": ("KuaiRand-Pure.tar.gz", "pure"), "1k": ("KuaiRand-1K.tar.gz", "1k")}


def member_names(suffix: str) -> tuple[str, str, str]:
    """(first log, second log, video features) file names of a variant."""
    return (
        f"log_standard_4_08_to_4_21_{suffix}.csv",
        f"log_standard_4_22_to_5_08_{suffix}.csv",
        f"video_features_basic_{suffix}.csv",
    )


def load(data, *, root: Path, reporter: Reporter) -> SourceData:
    """The release `data.variant` names; `root` is the project folder."""
    variant = data.variant or "pure"
    if variant not in VARIANTS:
        raise SemrecError(f"data.variant = {variant!r} is not a KuaiRand release", f"choose one of: {', '.join(VARIANTS)}")
    archive_name, suffix = VARIANTS[variant]
    files = RawFiles.from_settings(data, f"kuairand-{variant}", root=root, reporter=reporter)
    names = member_names(suffix)
    # unpacked files: in data.local_dir, or from an earlier run in the cache (the archive is then not read again)
    paths = _local_csvs(files.local_dir, names) if files.local_dir is not None else None
    paths = paths or _local_csvs(files.cache, names)
    if paths is None:
        archive = files.get(RawFile(archive_name, f"{ZENODO}/{archive_name}"))
        paths = extract_members(archive, names, files.cache / "data", publisher="KuaiRand")
    first_log, second_log, features = paths
    interactions = pl.concat([scan_log(first_log), scan_log(second_log)], how="vertical").collect()
    videos = read_videos(features, keep=interactions["item_key"].unique())
    return SourceData(f"kuairand {variant}", videos, interactions, unknown_items="fallback")


def _local_csvs(folder: Path, names: tuple[str, ...]) -> list[Path] | None:
    """The unpacked CSV files in `folder` (or its data/ folder), if all are there."""
    found = []
    for name in names:
        candidates = [folder / name, folder / "data" / name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _check_columns(path: Path, needed: set[str]) -> list[str]:
    header = pl.read_csv(path, n_rows=0).columns
    missing = needed - set(header)
    if missing:
        raise SemrecError(f"{path.name}: missing columns {', '.join(sorted(missing))}", "this is not a KuaiRand file")
    return header


def scan_log(path: Path) -> pl.LazyFrame:
    header = _check_columns(path, {"user_id", "video_id", "time_ms", "is_click"})
    # a log's fields are numbers and dates, never quoted: a cut last line is one with fewer of them
    check_last_line(path, separator=",", fields=len(header), layout="its header")
    return (
        pl.scan_csv(path, schema_overrides={"user_id": pl.Int64, "video_id": pl.Int64, "time_ms": pl.Int64, "is_click": pl.Int64})
        .filter(pl.col("is_click") == 1)
        .select(user_key="user_id", item_key="video_id", timestamp=pl.col("time_ms") // 1000)
    )


def read_videos(path: Path, keep: pl.Series | None = None) -> pl.DataFrame:
    """Item rows from the basic video features (only the videos in `keep`, when given: 1K lists millions)."""
    _check_columns(path, {"video_id", "author_id", "video_type", "upload_dt", "upload_type", "video_duration", "music_id", "tag"})
    frame = pl.scan_csv(path, infer_schema=False).with_columns(pl.col(pl.Utf8).str.strip_chars().replace("", None))
    bad = frame.filter(pl.col("video_id").cast(pl.Int64, strict=False).is_null()).head(1).collect()
    if bad.height:
        raise SemrecError(f"{path.name}: video_id {bad['video_id'][0]!r} is not a whole number")
    if keep is not None:
        frame = frame.filter(pl.col("video_id").cast(pl.Int64).is_in(keep.implode()))
    frame = frame.collect()
    tags = pl.col("tag").str.split(",").list.eval(pl.element().str.strip_chars().filter(pl.element() != ""))
    seconds = (pl.col("video_duration").cast(pl.Float64, strict=False) / 1000).round(0).cast(pl.Int64)
    title = pl.format("Video {} by author {}", "video_id", "author_id")
    has_tags = pl.col("_tags").list.len() > 0
    # pl.format gives null when a field is null, and concat_str skips nulls: absent features are left out
    text = pl.concat_str(
        [
            title + pl.lit("."),
            pl.format("Type: {}.", "video_type"),
            pl.format("Upload: {} on {}.", "upload_type", "upload_dt"),
            pl.format("Duration: {} s.", seconds),
            pl.when(has_tags).then(pl.format("Tags: {}.", pl.col("_tags").list.join(", "))),
            pl.format("Music: {}.", "music_id"),
        ],
        separator=" ",
        ignore_nulls=True,
    )
    return frame.with_columns(_tags=tags.fill_null([])).select(
        item_key=pl.col("video_id").cast(pl.Int64),
        title=title.fill_null(pl.format("Video {}", "video_id")),
        text=text,
        category_path=pl.when(has_tags)
        .then(pl.concat_list(pl.lit("tag ") + pl.col("_tags").list.first()))
        .otherwise(pl.lit([], dtype=pl.List(pl.Utf8))),
        author_id=pl.col("author_id"),
        video_type=pl.col("video_type"),
        upload_dt=pl.col("upload_dt"),
        duration_s=seconds,
        tags=pl.col("_tags"),
    )
