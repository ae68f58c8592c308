"""Issue 12, items 8-10, as a new user meets them: tags that carry nothing, hints that mislead, files cut short."""

import gzip
import hashlib
import json

import polars as pl
import pytest

from semrec.data import amazon, download, movielens
from semrec.data.download import RawFile, RawFiles
from semrec.data.prepare import positive_interactions
from semrec.data.source import SourceData
from semrec.errors import SemrecError
from semrec.artifacts import ITEMS

EVENTS = "user_id,item_id,timestamp\n" + "".join(f"u{u},I{(u * 7 + k) % 40},{u * 10 + k}\n" for u in range(30) for k in range(4))


def custom_workspace(make_workspace, files: dict[str, str | bytes], **settings):
    overrides = {f"data.custom.{k}": v for k, v in settings.items() if "." not in k}
    overrides.update({k: v for k, v in settings.items() if "." in k})
    ws = make_workspace("custom", **overrides)
    for name, body in files.items():
        (ws.root / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    return ws


def download_error(ws) -> SemrecError:
    with pytest.raises(SemrecError) as caught:
        ws.ensure("download")
    return caught.value


# -- 8: hidvae on tags that carry nothing -------------------------------------------------------


def hidvae_workspace(make_workspace, items: str, **settings):
    return custom_workspace(
        make_workspace, {"items.csv": items, "events.csv": EVENTS},
        items_path="items.csv", interactions_path="events.csv",
        **{
            "data.min_interactions": 0, "tag.source": "metadata", "tag.min_count": 2, "tokenizer.kind": "hidvae",
            "tokenizer.codebook_size": 8, "tokenizer.rqvae.hidden_dims": [16], "tokenizer.rqvae.latent_dim": 4,
            "tokenizer.train.steps": 3, "tokenizer.train.warmup_steps": 1, "tokenizer.kmeans_iters": 2,
            "tokenizer.device": "cpu", **settings,
        },
    )


@pytest.mark.usefixtures("no_sentence_model")
def test_hidvae_refuses_tags_that_are_the_same_on_every_item_and_says_how_to_get_real_ones(make_workspace):
    items = "item_id,title\n" + "".join(f"I{i},{['red', 'blue'][i % 2]} mug {i}\n" for i in range(40))
    ws = hidvae_workspace(make_workspace, items)
    with pytest.raises(SemrecError) as caught:
        ws.ensure("fit-tokenizer")
    error = caught.value
    assert error.exit_code == 2
    assert "same tag at every level ('Uncategorized' at level 1" in error.message
    assert "data.custom.category_column" in error.hint and 'tag.source = "llm"' in error.hint
    assert 'tokenizer.kind = "rqvae"' in error.hint
    assert not ws.path("tokenizer").exists()
    warning = ws.reporter.text()
    assert "filler tags like 'Uncategorized'" in warning and "Makeup" not in warning


@pytest.mark.usefixtures("no_sentence_model")
def test_hidvae_trains_on_a_category_column_and_the_filler_warning_uses_the_data_s_own_tags(make_workspace):
    items = "item_id,title,cat\n" + "".join(
        f"I{i},{['red', 'blue'][i % 2]} mug {i},{['Home > Kitchen', 'Garden'][i % 2]}\n" for i in range(40)
    )
    ws = hidvae_workspace(make_workspace, items, category_column="cat")
    figures = ws.ensure("fit-tokenizer")
    assert figures["kind"] == "hidvae"
    assert "filler tags like 'Kitchen (general)'" in ws.reporter.text() or "'Garden (general)'" in ws.reporter.text()


# -- 9: hints that say what is wrong ------------------------------------------------------------


@pytest.mark.parametrize("separator, name", [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")])
def test_a_csv_with_another_separator_is_read_and_the_separator_is_shown(make_workspace, separator, name):
    items = "item_id,title\nA,Apple\nB,Banana\nC,Cherry\n".replace(",", separator)
    events = "user_id,item_id,timestamp\nu,A,1\nu,B,2\nu,C,3\n".replace(",", separator)
    ws = custom_workspace(make_workspace, {"items.csv": items, "events.csv": events}, items_path="items.csv", interactions_path="events.csv")
    figures = ws.ensure("download")
    assert figures["separators_found"] == {"items.csv": name, "events.csv": name}
    assert pl.read_parquet(ws.path(ITEMS))["title"].to_list() == ["Apple", "Banana", "Cherry"]


def test_a_missing_column_says_how_the_header_was_split(make_workspace):
    ws = custom_workspace(
        make_workspace, {"items.csv": "sku,title\nA,Apple\n", "events.csv": "user_id,item_id,timestamp\nu,A,1\n"},
        items_path="items.csv", interactions_path="events.csv",
    )
    error = download_error(ws)
    assert "no column 'item_id' (data.custom.item_id_column)" in error.message
    assert "columns found: 'sku', 'title' (the header split on commas)" in error.hint


def test_a_header_only_interactions_file_says_it_has_no_rows_not_to_lower_a_rating_threshold(make_workspace):
    ws = custom_workspace(
        make_workspace, {"items.csv": "item_id,title\nA,Apple\n", "events.csv": "user_id,item_id,timestamp\n"},
        items_path="items.csv", interactions_path="events.csv",
    )
    error = download_error(ws)
    assert error.message == "events.csv has no rows, only a header"
    assert "positive_rating_min" not in str(error)


def test_no_interactions_blames_the_rating_threshold_only_when_it_removed_them():
    empty = pl.DataFrame(schema={"user_key": pl.Utf8, "item_key": pl.Utf8, "timestamp": pl.Int64, "rating": pl.Float64})
    rated = pl.DataFrame({"user_key": ["u"], "item_key": ["A"], "timestamp": [1], "rating": [2.0]})
    with pytest.raises(SemrecError) as caught:
        positive_interactions(SourceData("s", pl.DataFrame(), empty), 0.0)
    assert "positive_rating_min" not in str(caught.value) and "no interactions" in caught.value.message
    with pytest.raises(SemrecError, match=r"no rating reaches data.positive_rating_min = 4") as caught:
        positive_interactions(SourceData("s", pl.DataFrame(), rated), 4.0)
    assert caught.value.hint == "lower data.positive_rating_min"


@pytest.mark.parametrize(
    "name, body",
    [
        ("items.csv", b"item_id,title\nA,Apple\nB,Caf\xe9 au lait\nC,Cherry\n"),
        ("items.jsonl", b'{"item_id": "A", "title": "Apple"}\n{"item_id": "B", "title": "Caf\xe9"}\n'),
    ],
)
def test_a_latin_1_file_names_the_line_and_says_to_save_it_as_utf_8(make_workspace, name, body):
    ws = custom_workspace(make_workspace, {name: body, "events.csv": EVENTS}, items_path=name, interactions_path="events.csv")
    error = download_error(ws)
    line = 3 if name.endswith(".csv") else 2
    assert error.message.startswith(f"{name} line {line} is not UTF-8 text: byte 0xe9 in ")
    assert "Caf\xe9" in error.message and "save the file as UTF-8" in error.hint and "iconv" in error.hint


def raw_beauty_files(folder):
    folder.mkdir(parents=True)
    review = json.dumps({"reviewerID": "U1", "asin": "A", "unixReviewTime": 1, "overall": 5.0})
    (folder / "reviews_Beauty_5.json.gz").write_bytes(gzip.compress((review + "\n").encode()))
    (folder / "meta_Beauty.json.gz").write_bytes(gzip.compress(b"{'asin': 'A', 'title': \n"))


def test_a_bad_metadata_file_in_local_dir_is_to_be_replaced_not_deleted(make_workspace, tmp_path):
    raw_beauty_files(tmp_path / "raw")
    ws = make_workspace("beauty", **{"data.source_format": "raw", "data.local_dir": str(tmp_path / "raw")})
    error = download_error(ws)
    assert "meta_Beauty.json.gz line 1: not a Python literal" in error.message
    assert "your own copy (data.local_dir): replace it" in error.hint and "delete" not in error.hint


def test_a_bad_metadata_file_in_the_cache_is_to_be_deleted_and_fetched_again(make_workspace):
    cache = download.dataset_cache("amazon-beauty")
    raw_beauty_files(cache)
    error = download_error(make_workspace("beauty", **{"data.source_format": "raw"}))
    assert error.hint.endswith(f"delete {cache / 'meta_Beauty.json.gz'} to fetch it again")


def test_a_404_hint_says_to_save_the_file_under_the_name_semrec_looks_for(httpserver, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, httpserver.url_for("/"))
    httpserver.expect_request("/sequential_data.txt").respond_with_data("not here", status=404)
    raw = amazon.P5_FILES["beauty"][0]
    with pytest.raises(SemrecError, match="HTTP 404") as caught:
        RawFiles("amazon-beauty").get(raw)
    assert f"fetch {raw.url} by hand, save it as sequential_data.txt (the name semrec looks for, not Beauty.txt)" in caught.value.hint
    same_name = RawFile("ml-1m.zip", "https://files.grouplens.org/datasets/movielens/ml-1m.zip")
    assert "save it as" not in RawFiles("movielens-1m").placement_hint(same_name)


# -- 10: files cut short -----------------------------------------------------------------------


def test_a_truncated_file_in_local_dir_is_refused_by_its_recorded_digest(make_workspace, tmp_path):
    local = tmp_path / "p5"
    local.mkdir()
    (local / "sequential_data.txt").write_text("1 1 2 3\n2 3 1 2\n3 4 5")  # cut: "3 4 5 6 ..." upstream
    ws = make_workspace("beauty", **{"data.source_format": "p5", "data.local_dir": str(local)})
    error = download_error(ws)
    assert f"{local / 'sequential_data.txt'} is not the file semrec expects as sequential_data.txt" in error.message
    assert "sha256" in error.message and "may be truncated" in error.message
    assert amazon.P5_FILES["beauty"][0].url in error.hint


def test_a_recorded_digest_is_of_the_content_of_a_gzipped_copy(tmp_path):
    body = b"1 1 2 3\n"
    (tmp_path / "sequential_data.txt.gz").write_bytes(gzip.compress(body))
    files = RawFiles("amazon-beauty", local_dir=tmp_path)
    good = RawFile("sequential_data.txt", None, sha256=hashlib.sha256(body).hexdigest())
    assert files.get(good) == tmp_path / "sequential_data.txt.gz"
    with pytest.raises(SemrecError, match="may be truncated"):
        files.get(RawFile("sequential_data.txt", None, sha256="0" * 64))


def test_a_movielens_file_cut_mid_line_in_local_dir_is_refused(make_workspace, tmp_path):
    local = tmp_path / "ml"
    local.mkdir()
    (local / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n")
    (local / "ratings.dat").write_text("1::1::5::978300760\n2::1")
    error = download_error(make_workspace("ml-1m", **{"data.local_dir": str(local)}))
    assert error.message.startswith("ratings.dat looks truncated: its last line ends without a newline and has 2 of the 4 fields")
    assert "'2::1'" in error.message and "your own copy (data.local_dir)" in error.hint


def test_a_movielens_csv_cut_mid_line_is_refused(tmp_path):
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Comedy\n2,"Jumanji')
    with pytest.raises(SemrecError, match="movies.csv looks truncated: .* has 2 of the 3 fields of movieId,title,genres"):
        movielens.read_movies_csv(tmp_path / "movies.csv")


@pytest.mark.parametrize(
    "name, body, why",
    [
        ("events.csv", "user_id,item_id,timestamp\nu,A,1\nu,B,2\nu,C", "has 2 of the 3 fields of the header"),
        ("events.csv", 'user_id,item_id,timestamp\nu,A,1\nu,"B', "has 2 of the 3 fields of the header"),
        ("events.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\tA\t1\nu\tB", "has 2 of the 3 fields of the header"),
        ("events.jsonl", '{"user_id": "u", "item_id": "A", "timestamp": 1}\n{"user_id": "u", "item_', "is not a whole JSON record"),
    ],
)
def test_a_custom_table_cut_mid_line_is_refused(make_workspace, name, body, why):
    ws = custom_workspace(
        make_workspace, {"items.csv": "item_id,title\nA,Apple\nB,Banana\n", name: body},
        items_path="items.csv", interactions_path=name,
    )
    error = download_error(ws)
    assert error.message.startswith(f"{name} looks truncated: its last line ends without a newline and {why}")
    assert "cut short" in error.hint


def test_a_complete_last_line_without_a_newline_is_accepted(make_workspace):
    # an empty last field, and a last record whose quoted title spans two lines
    items = 'item_id\ttitle\tcat\nB\tPlate\t\nA\t"Mug with a\nline break"\tHome'
    ws = custom_workspace(
        make_workspace, {"items.tsv": items, "events.csv": "user_id,item_id,timestamp\nu,A,1\nu,B,2"},
        items_path="items.tsv", interactions_path="events.csv", category_column="cat", **{"data.min_interactions": 0},
    )
    ws.ensure("download")
    assert pl.read_parquet(ws.path(ITEMS))["title"].to_list() == ["Mug with a line break", "Plate"]


def test_a_kuairand_log_cut_mid_line_in_local_dir_is_refused(make_workspace, tmp_path):
    from test_data_sources import LOG_HEADER, log_row

    local = tmp_path / "kuairand"
    local.mkdir()
    full = LOG_HEADER + log_row(7, 100, 1649390000123, 1) + log_row(8, 101, 1649390005000, 1)
    (local / "log_standard_4_08_to_4_21_pure.csv").write_text(full)
    (local / "log_standard_4_22_to_5_08_pure.csv").write_text(full[:-25])  # cut inside its last row
    (local / "video_features_basic_pure.csv").write_text("video_id,author_id\n100,441\n101,442\n")
    ws = make_workspace("kuairand", **{"data.min_interactions": 0, "data.local_dir": str(local)})
    with pytest.raises(SemrecError, match=r"log_standard_4_22_to_5_08_pure.csv looks truncated: .* of the 19 fields"):
        ws.ensure("download")
