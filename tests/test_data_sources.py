"""Every source end to end on tiny files in its upstream format, served over HTTP or from data.local_dir."""

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import replace

import polars as pl
import pytest

from semrec.data import amazon, download, movielens
from semrec.data.download import RawFile
from semrec.errors import SemrecError
from semrec.artifacts import INTERACTIONS, ITEMS, SPLITS


@pytest.fixture
def mirror(httpserver, monkeypatch):
    """Point every download at the local server; `mirror(name, bytes)` serves a file."""
    monkeypatch.setenv(download.MIRROR_ENV, httpserver.url_for("/"))

    def serve(name: str, body: bytes) -> None:
        httpserver.expect_request(f"/{name}").respond_with_data(body)

    return serve


def tables(ws):
    return pl.read_parquet(ws.path(ITEMS)), pl.read_parquet(ws.path(INTERACTIONS)), pl.read_parquet(ws.path(SPLITS))


def sequences(interactions: pl.DataFrame) -> list[list[int]]:
    return interactions.group_by("user", maintain_order=True).agg("item")["item"].to_list()


# -- Amazon, raw UCSD files -------------------------------------------------------------------

REVIEWS = [  # file order matters: ties in time keep it
    ("U1", "B", 100), ("U2", "A", 10), ("U1", "A", 100), ("U1", "C", 50), ("U2", "B", 20), ("U2", "C", 30),
    ("U3", "A", 5), ("U3", "B", 6), ("U3", "C", 7), ("U4", "D", 1), ("U4", "A", 2), ("U4", "B", 3),
    ("U5", "D", 4), ("U5", "E", 5),
]
META = [
    {"asin": "A", "title": "Rose &amp; Honey Lip Balm", "price": 4.5, "brand": "Bloom",
     "categories": [["Beauty", "Makeup", "Lips"], ["Beauty", "Gifts"]], "salesRank": {"Beauty": 10}},
    {"asin": "B", "categories": [["Beauty", "Skin Care", "Face"]], "related": {"also_bought": ["A"]}},
    {"asin": "C", "title": "Women's Night Cream\n50 ml", "brand": "Lumi", "categories": [["Beauty", "Skin Care"]]},
    {"asin": "D", "title": "Dropped by the 3-core", "categories": [["Beauty"]]},
]


def reviews_gz(rows=REVIEWS) -> bytes:
    lines = [
        json.dumps({"reviewerID": u, "asin": i, "reviewerName": "x", "helpful": [0, 0], "reviewText": "ok",
                    "overall": 5.0, "summary": "s", "unixReviewTime": t, "reviewTime": "01 1, 2014"})
        for u, i, t in rows
    ]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def meta_gz(records=META, extra_lines=()) -> bytes:
    return gzip.compress(("\n".join([repr(r) for r in records] + list(extra_lines)) + "\n").encode())


def test_amazon_raw_files_are_5core_filtered_time_ordered_and_numbered_by_first_appearance(make_workspace, mirror):
    mirror("reviews_Beauty_5.json.gz", reviews_gz())
    mirror("meta_Beauty.json.gz", meta_gz())
    ws = make_workspace("beauty", **{"data.source_format": "raw", "data.min_interactions": 3})
    figures = ws.ensure("download")
    items, interactions, splits = tables(ws)
    # U5 and items D, E go in the first round; U4 (left with 2) in the second
    assert figures["users"] == 3 and figures["items"] == 3 and figures["interactions"] == 9
    assert interactions["user_key"].unique(maintain_order=True).to_list() == ["U1", "U2", "U3"]
    # U1: C at 50, then B and A tie at 100 and keep file order (B was written first)
    assert items["item_key"].to_list() == ["C", "B", "A"]
    assert sequences(interactions) == [[0, 1, 2], [2, 1, 0], [2, 1, 0]]
    assert splits.row(0, named=True) == {"user": 0, "train": [0], "valid": 1, "test": 2}
    lip = items.row(2, named=True)
    assert lip["title"] == "Rose & Honey Lip Balm" and lip["category_path"] == ["Beauty", "Makeup", "Lips"]
    assert lip["text"] == "Rose & Honey Lip Balm. Brand: Bloom. Categories: Beauty > Makeup > Lips. Price: $4.50."
    assert items.row(1, named=True)["title"] == "Face B"  # no title: category leaf + ASIN, and a warning
    assert items.row(0, named=True)["title"] == "Women's Night Cream 50 ml"
    assert figures["titles_filled"] == 1 and any("no title" in w for w in figures["warnings"])
    cached = download.dataset_cache("amazon-beauty")
    assert (cached / "reviews_Beauty_5.json.gz").is_file() and (cached / "meta_Beauty.json.gz").is_file()


def test_a_metadata_line_that_is_not_a_literal_names_the_file_and_line(make_workspace, mirror):
    mirror("reviews_Beauty_5.json.gz", reviews_gz())
    mirror("meta_Beauty.json.gz", meta_gz(META[:2], ["{'asin': 'C', 'title': __import__('os').system('echo owned')}"]))
    ws = make_workspace("beauty", **{"data.source_format": "raw", "data.min_interactions": 3})
    with pytest.raises(SemrecError, match=r"meta_Beauty.json.gz line 3: not a Python literal"):
        ws.ensure("download")


def test_a_review_line_that_is_not_a_record_names_the_file_and_line(make_workspace, mirror):
    body = gzip.decompress(reviews_gz()).decode().splitlines()
    body[4] = '{"reviewerID": "U2", "asin": "B"'
    mirror("reviews_Beauty_5.json.gz", gzip.compress("\n".join(body).encode()))
    mirror("meta_Beauty.json.gz", meta_gz())
    ws = make_workspace("beauty", **{"data.source_format": "raw"})
    with pytest.raises(SemrecError, match=r"reviews_Beauty_5.json.gz line 5"):
        ws.ensure("download")


# -- Amazon, P5 files -------------------------------------------------------------------------

ITEM_FILE = (
    "item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\tcategories:token_seq\tprice:float\tbrand:token\n"
    "X1\tNail Lacquer, Red\tBeauty\t3.0\t'Beauty', 'Makeup', 'Nails'\t12.0\tOPI\n"
    "X2\t\tBeauty\t\t\"'Beauty', 'Fragrance', \"\"Women's\"\", 'Eau de Parfum'\"\t\t\n"
    "X3\t\"Cream with a\nline break\"\t\t\t'Beauty', 'Skin Care'\t5.5\tLumi\n"
)


@pytest.fixture
def write_p5(monkeypatch):
    """write_p5(folder, variant) writes tiny P5 files and records their digests, as amazon.P5_FILES records the real ones'."""

    def write(folder, variant="beauty", with_items=True):
        files = amazon.P5_FILES[variant]
        _write_p5_files(folder, with_items, item_name=files[2].name)
        recorded = tuple(
            replace(raw, sha256=_content_sha256(download.find_local(raw, folder))) if raw.sha256 else raw for raw in files
        )
        monkeypatch.setitem(amazon.P5_FILES, variant, recorded)
        return folder

    return write


def _content_sha256(path) -> str:
    body = path.read_bytes()
    return hashlib.sha256(gzip.decompress(body) if path.suffix == ".gz" else body).hexdigest()


def _write_p5_files(folder, with_items, item_name):
    folder.mkdir()
    # users out of order in the file: ids must still follow P5's numbering
    (folder / "sequential_data.txt.gz").write_bytes(gzip.compress(b"2 3 1 2\n1 1 2 3\n"))
    datamaps = {"user2id": {"UA": "1", "UB": "2"}, "item2id": {"X1": "1", "X2": "2", "X3": "3"},
                "id2user": {"1": "UA", "2": "UB"}, "id2item": {"1": "X1", "2": "X2", "3": "X3"}}
    (folder / "datamaps.json").write_text(json.dumps(datamaps))
    if with_items:
        (folder / item_name).write_text(ITEM_FILE)


def test_amazon_p5_ids_follow_datamaps_and_metadata_comes_from_the_recbole_item_file(make_workspace, tmp_path, write_p5):
    local = write_p5(tmp_path / "p5")
    ws = make_workspace("beauty", **{"data.source_format": "p5", "data.local_dir": str(local), "data.min_interactions": 0})
    figures = ws.ensure("download")
    items, interactions, _ = tables(ws)
    assert items["item_key"].to_list() == ["X1", "X2", "X3"]
    assert interactions["user_key"].unique(maintain_order=True).to_list() == ["UA", "UB"]
    assert sequences(interactions) == [[0, 1, 2], [2, 0, 1]]
    assert interactions["timestamp"].null_count() == interactions.height
    assert items["category_path"].to_list() == [
        ["Beauty", "Makeup", "Nails"], ["Beauty", "Fragrance", "Women's", "Eau de Parfum"], ["Beauty", "Skin Care"]
    ]
    assert items["title"].to_list() == ["Nail Lacquer, Red", "Eau de Parfum X2", "Cream with a line break"]
    assert items["price"].to_list() == [12.0, None, 5.5]
    assert figures["titles_filled"] == 1


def test_amazon_p5_without_an_item_file_uses_the_asins_and_warns(make_workspace, tmp_path, write_p5):
    local = write_p5(tmp_path / "p5", "sports", with_items=False)
    ws = make_workspace("sports", **{"data.source_format": "p5", "data.local_dir": str(local), "data.min_interactions": 0})
    figures = ws.ensure("download")
    items, _, _ = tables(ws)
    assert items["text"].to_list() == ["X1.", "X2.", "X3."] and items["category_path"].to_list() == [[], [], []]
    assert any("Amazon_Sports_and_Outdoors.item not found" in w for w in figures["warnings"])


def test_amazon_p5_downloads_are_checked_against_the_recorded_digests(make_workspace, mirror, httpserver):
    mirror("sequential_data.txt", b"1 1 2 3\n")
    ws = make_workspace("beauty", **{"data.source_format": "p5"})
    with pytest.raises(SemrecError, match="sha256"):
        ws.ensure("download")
    assert (download.dataset_cache("amazon-beauty") / "sequential_data.txt.corrupt").is_file()


# -- MovieLens --------------------------------------------------------------------------------

RATINGS_DAT = b"1::10::5::300\n1::20::3::100\n1::30::4::100\n2::10::4::50\n2::30::2::60\n2::20::5::70\n"
MOVIES_DAT = "10::Caf\xe9 Society (1999)::Comedy|Romance\n20::Heat (1995)::Action|Crime|Thriller\n30::Alien (1979)::Horror|Sci-Fi\n40::Unrated (2000)::Drama\n"


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in members.items():
            z.writestr(name, body)
    return buffer.getvalue()


def test_movielens_1m_zip_is_verified_parsed_and_ordered(make_workspace, mirror, monkeypatch):
    archive = zip_bytes({"ml-1m/ratings.dat": RATINGS_DAT, "ml-1m/movies.dat": MOVIES_DAT.encode("latin-1")})
    mirror("ml-1m.zip", archive)
    monkeypatch.setitem(movielens.ARCHIVES, "1m", RawFile("ml-1m.zip", movielens.ARCHIVES["1m"].url, md5=hashlib.md5(archive).hexdigest()))
    ws = make_workspace("ml-1m", **{"data.min_interactions": 0})
    figures = ws.ensure("download")
    items, interactions, _ = tables(ws)
    assert figures["users"] == 2 and figures["items"] == 3
    # user 1: 20 and 30 tie at 100 (file order), then 10 at 300
    assert items["item_key"].to_list() == ["20", "30", "10"]
    assert sequences(interactions) == [[0, 1, 2], [2, 1, 0]]
    cafe = items.row(2, named=True)
    assert cafe["title"] == "Café Society (1999)" and cafe["year"] == 1999
    assert cafe["genres"] == ["Comedy", "Romance"] and cafe["category_path"] == ["Comedy"]
    assert cafe["text"] == "Café Society. Year: 1999. Genres: Comedy, Romance."


def test_movielens_positive_rating_min_keeps_only_high_ratings(make_workspace, mirror, monkeypatch):
    mirror("ml-1m.zip", zip_bytes({"ml-1m/ratings.dat": RATINGS_DAT, "ml-1m/movies.dat": MOVIES_DAT.encode("latin-1")}))
    monkeypatch.setitem(movielens.ARCHIVES, "1m", RawFile("ml-1m.zip", "https://example.org/ml-1m.zip"))
    ws = make_workspace("ml-1m", **{"data.min_interactions": 0, "data.positive_rating_min": 4.0})
    assert ws.ensure("download")["interactions"] == 4


def test_movielens_reconstructed_ratings_place_rows_without_time_beside_their_neighbours(make_workspace, tmp_path):
    local = tmp_path / "ml"
    local.mkdir()
    csv = "UserID,MovieID,Rating,Timestamp\n1,20,3,\n1,10,5,300\n1,30,2,\n1,40,4,100\n1,50,5,200\n"
    (local / "ratings_reconstructed.csv.gz").write_bytes(gzip.compress(csv.encode()))
    movies = MOVIES_DAT + "50::Fargo (1996)::Crime|Drama|Thriller\n"
    (local / "movies.dat.gz").write_bytes(gzip.compress(movies.encode("latin-1")))
    ws = make_workspace("ml-1m", **{"data.local_dir": str(local), "data.min_interactions": 0})
    figures = ws.ensure("download")
    items, interactions, _ = tables(ws)
    # 20 (no time, first in file) sorts with the next known time (300); 30 with the previous one (300)
    assert [items["item_key"][i] for i in sequences(interactions)[0]] == ["40", "50", "20", "10", "30"]
    assert interactions["timestamp"].to_list() == [100, 200, None, 300, None]
    assert figures["interactions_without_timestamp"] == 2


def test_movielens_32m_checks_the_published_md5_and_scans_the_csv(make_workspace, mirror):
    ratings = "userId,movieId,rating,timestamp\n1,1,4.0,10\n1,2,3.5,5\n2,2,5.0,7\n2,1,1.0,8\n2,3,4.5,9\n"
    movies = 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"American President, The (1995)",Comedy|Drama|Romance\n3,Untitled,(no genres listed)\n'
    archive = zip_bytes({"ml-32m/ratings.csv": ratings.encode(), "ml-32m/movies.csv": movies.encode()})
    mirror("ml-32m.zip", archive)
    mirror("ml-32m.zip.md5", f"MD5 (ml-32m.zip) = {hashlib.md5(archive).hexdigest()}\n".encode())
    ws = make_workspace("ml-32m", **{"data.min_interactions": 0})
    figures = ws.ensure("download")
    items, interactions, _ = tables(ws)
    assert figures["interactions"] == 5 and items["item_key"].to_list() == ["2", "1", "3"]
    assert items.row(0, named=True)["text"] == "American President, The. Year: 1995. Genres: Comedy, Drama, Romance."
    assert items.row(2, named=True)["category_path"] == [] and items.row(2, named=True)["year"] is None
    assert (download.dataset_cache("movielens-32m") / "ml-32m" / "ratings.csv").is_file()


def test_movielens_32m_with_a_wrong_published_md5_is_refused(make_workspace, mirror):
    mirror("ml-32m.zip", zip_bytes({"ml-32m/ratings.csv": b"userId,movieId,rating,timestamp\n"}))
    mirror("ml-32m.zip.md5", b"MD5 (ml-32m.zip) = 0123456789abcdef0123456789abcdef\n")
    ws = make_workspace("ml-32m")
    with pytest.raises(SemrecError, match="md5"):
        ws.ensure("download")


# -- KuaiRand ---------------------------------------------------------------------------------

LOG_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
              "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n")


def log_row(user, video, time_ms, click):
    return f"{user},{video},20220421,400,{time_ms},{click},0,0,0,0,0,1,1000,17200,0,0,0,0,1\n"


def kuairand_archive() -> bytes:
    first = LOG_HEADER + log_row(7, 100, 1649390000123, 1) + log_row(7, 101, 1649390000999, 0) + log_row(8, 101, 1649390005000, 1)
    second = LOG_HEADER + log_row(7, 102, 1650585600000, 1) + log_row(8, 100, 1650585600500, 1) + log_row(7, 101, 1650585601000, 1)
    features = (
        "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
        "server_height,music_id,music_type,tag\n"
        '100,441,NORMAL,2020-07-08,ShortImport,1,17200.0,720,1280,989206467,4,"12,65"\n'
        "101,442,AD,2021-01-02,LongImport,1,60000.0,720,1280,0,9,28\n"
        "102,443,NORMAL,,ShortImport,1,,720,1280,5,4,\n"
        "103,444,NORMAL,2021-01-02,ShortImport,1,1000.0,720,1280,5,4,3\n"
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, body in (
            ("log_standard_4_08_to_4_21_pure.csv", first), ("log_standard_4_22_to_5_08_pure.csv", second),
            ("video_features_basic_pure.csv", features), ("log_random_4_22_to_5_08_pure.csv", LOG_HEADER),
        ):
            info = tarfile.TarInfo(f"KuaiRand-Pure/data/{name}")
            info.size = len(body.encode())
            tar.addfile(info, io.BytesIO(body.encode()))
    return buffer.getvalue()


def test_kuairand_archive_gives_clicks_in_time_order_with_text_from_the_features(make_workspace, mirror, httpserver):
    mirror("KuaiRand-Pure.tar.gz", kuairand_archive())
    ws = make_workspace("kuairand", **{"data.min_interactions": 0})
    figures = ws.ensure("download")
    items, interactions, _ = tables(ws)
    assert figures["interactions"] == 5 and figures["users"] == 2
    assert items["item_key"].to_list() == ["100", "102", "101"]
    assert sequences(interactions) == [[0, 1, 2], [2, 0]]
    assert interactions["timestamp"].to_list()[0] == 1649390000
    first = items.row(0, named=True)
    assert first["text"] == ("Video 100 by author 441. Type: NORMAL. Upload: ShortImport on 2020-07-08. "
                             "Duration: 17 s. Tags: 12, 65. Music: 989206467.")
    assert first["category_path"] == ["tag 12"] and items.row(1, named=True)["category_path"] == []
    assert (download.dataset_cache("kuairand-pure") / "data" / "video_features_basic_pure.csv").is_file()
    requests = len(httpserver.log)
    assert ws.ensure("download", force=True) == figures
    assert len(httpserver.log) == requests, "a rerun uses the unpacked files, without the network"


def test_an_archive_without_the_kuairand_files_is_a_clear_error(make_workspace, mirror):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    mirror("KuaiRand-Pure.tar.gz", buffer.getvalue())
    with pytest.raises(SemrecError, match="KuaiRand-Pure.tar.gz has no log_standard"):
        make_workspace("kuairand").ensure("download")


def test_an_unknown_variant_names_the_choices(make_workspace):
    with pytest.raises(SemrecError, match="data.variant = 'kitchen'") as caught:
        make_workspace("beauty", **{"data.variant": "kitchen"}).ensure("download")
    assert "beauty, sports, toys" in caught.value.hint


# -- custom -----------------------------------------------------------------------------------


def custom_workspace(make_workspace, files: dict[str, str | bytes], **settings):
    overrides = {f"data.custom.{k}": v for k, v in settings.items()}
    ws = make_workspace("custom", **overrides)
    for name, body in files.items():
        (ws.root / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    return ws


def test_custom_csv_tables_with_a_column_mapping(make_workspace):
    ws = custom_workspace(
        make_workspace,
        {
            "items.csv": "sku,name,brand,cat\nK1,Trail Shoe,Acme,Sports > Running > Shoes\nK2,Rain Jacket,,Sports > Outerwear\nK3,Unused,Acme,\n",
            "events.csv": "customer,sku,when\nc1,K2,2024-01-02T10:00:00\nc1,K1,2024-01-01T10:00:00\nc2,K1,1704067200\n",
        },
        items_path="items.csv", interactions_path="events.csv", item_id_column="sku", user_id_column="customer",
        timestamp_column="when", title_column="name", text_columns=["brand"], category_column="cat",
    )
    figures = ws.ensure("download")
    items, interactions, splits = tables(ws)
    assert figures["items"] == 2 and items["item_key"].to_list() == ["K1", "K2"]
    assert sequences(interactions) == [[0, 1], [0]]
    assert interactions["timestamp"].to_list() == [1704103200, 1704189600, 1704067200]
    shoe = items.row(0, named=True)
    assert shoe["category_path"] == ["Sports", "Running", "Shoes"] and shoe["brand"] == "Acme"
    assert shoe["text"] == "Trail Shoe. Brand: Acme. Categories: Sports > Running > Shoes."
    assert splits.height == 0  # nobody has 3 interactions


def test_custom_parquet_items_and_json_lines_interactions(make_workspace, tmp_path):
    buffer = io.BytesIO()
    pl.DataFrame({"item_id": [1, 2, 3], "title": ["A", "B", "C"], "path": [["x", "y"], ["x"], []]}).write_parquet(buffer)
    lines = "\n".join(json.dumps({"user_id": u, "item_id": i, "timestamp": t, "stars": r})
                      for u, i, t, r in [(1, 3, 30, 5), (1, 1, 10, 1), (1, 2, 20, 4), (2, 2, 5, 5)])
    ws = custom_workspace(
        make_workspace, {"items.parquet": buffer.getvalue(), "events.jsonl": lines},
        items_path="items.parquet", interactions_path="events.jsonl", category_column="path", rating_column="stars",
    )
    ws.settings.data.positive_rating_min = 4.0
    ws.ensure("download")
    items, interactions, splits = tables(ws)
    assert items["item_key"].to_list() == ["2", "3"] and items["category_path"].to_list() == [["x"], []]
    assert sequences(interactions) == [[0, 1], [0]]


def test_custom_recbole_atomic_files(make_workspace):
    ws = custom_workspace(
        make_workspace,
        {
            "shop.item": "item_id:token\ttitle:token\tcategories:token_seq\nI1\tBlue \"Mug\"\tHome>Kitchen\nI2\tPlate\tHome>Kitchen\n",
            "shop.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu\tI2\t5\t20.0\nu\tI1\t4\t10.0\nu\tI2\t3\t30.0\n",
        },
        items_path="shop.item", interactions_path="shop.inter", category_column="categories",
    )
    ws.ensure("download")
    items, interactions, splits = tables(ws)
    assert items["title"].to_list() == ["Blue \"Mug\"", "Plate"] and items["category_path"][0].to_list() == ["Home", "Kitchen"]
    assert splits.row(0, named=True) == {"user": 0, "train": [0], "valid": 1, "test": 1}


GOOD_ITEMS = "item_id,title\nA,Apple\nB,Banana\nC,Cherry\n"
GOOD_EVENTS = "user_id,item_id,timestamp\nu,A,1\nu,B,2\nu,C,3\n"


@pytest.mark.parametrize(
    "items, events, settings, message",
    [
        (GOOD_ITEMS, "user_id,item_id\nu,A\n", {}, "events.csv: no column 'timestamp' (data.custom.timestamp_column)"),
        ("item_id,name\nA,Apple\n", GOOD_EVENTS, {}, "items.csv: no column 'title' (data.custom.title_column)"),
        ("item_id,title\nA,Apple\nB,Banana\nA,Apricot\n", GOOD_EVENTS, {},
         "items.csv line 4, column 'item_id': duplicate item id 'A' (also on line 2)"),
        (GOOD_ITEMS, "user_id,item_id,timestamp\nu,A,1\nu,Z,2\n", {},
         "events.csv line 3, column 'item_id': item 'Z' is not in the items table"),
        (GOOD_ITEMS, "user_id,item_id,timestamp\nu,A,1\nu,B,2\nu,C,yesterday\n", {},
         "events.csv line 4, column 'timestamp': timestamp 'yesterday' cannot be read as unix seconds or ISO 8601"),
        (GOOD_ITEMS, "user_id,item_id,timestamp\nu,A,01/02/2024\nu,B,2024-02-03\n", {"timestamp_format": "%d/%m/%Y"},
         "events.csv line 3, column 'timestamp': timestamp '2024-02-03' cannot be read with timestamp_format '%d/%m/%Y'"),
        (GOOD_ITEMS, "user_id,item_id,timestamp\nu,A,1\n,B,2\n", {}, "events.csv line 3, column 'user_id': empty id"),
        (GOOD_ITEMS, "user_id,item_id,timestamp,stars\nu,A,1,five\n", {"rating_column": "stars"},
         "events.csv line 2, column 'stars': rating 'five' is not a number"),
    ],
)
def test_custom_errors_name_the_file_the_line_and_the_column(make_workspace, items, events, settings, message):
    ws = custom_workspace(
        make_workspace, {"items.csv": items, "events.csv": events},
        items_path="items.csv", interactions_path="events.csv", **settings,
    )
    with pytest.raises(SemrecError) as caught:
        ws.ensure("download")
    assert message in caught.value.message


def test_custom_without_files_says_which_settings_to_fill(make_workspace):
    with pytest.raises(SemrecError, match="data.custom.items_path and data.custom.interactions_path"):
        make_workspace("custom").ensure("download")
