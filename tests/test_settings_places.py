"""Settings live where they are used; keys at their old places still load, with a notice; a stage's
fingerprint holds only what it reads."""

import json

import pytest
import tomli_w
from typer.testing import CliRunner

from semrec.cli import app
from semrec.errors import SemrecError
from semrec.pipeline import STAGES, lookup, stage_settings
from semrec.project import init_project, load_project, preset_settings, settings_from_dict
from semrec.settings import MOVED_KEYS

runner = CliRunner()


def nested(dotted: str, value) -> dict:
    raw: dict = {}
    *tables, key = dotted.split(".")
    table = raw
    for name in tables:
        table = table.setdefault(name, {})
    table[key] = value
    return raw


def changed_value(value):
    """A valid value other than the default of a moved key."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, int):
        return value + 1
    if isinstance(value, list):
        return [*value, value[-1]]
    return {"l2": "cosine", "rotation": "ste", "cosine": "constant"}[value]


@pytest.mark.parametrize("old, new", sorted(MOVED_KEYS.items()))
def test_a_key_at_its_old_place_is_read_with_a_notice_naming_the_new_place(old, new, tmp_path):
    value = changed_value(lookup(preset_settings("demo"), new))
    path = tmp_path / "semrec.toml"
    path.write_text(tomli_w.dumps(nested(old, value)))
    project = load_project(explicit=path)
    assert lookup(project.settings, new) == value
    assert len(project.notices) == 1 and f"{old} is now {new}" in project.notices[0]


def test_the_cli_says_where_a_moved_key_went_in_one_line(tmp_path):
    init_project("demo", tmp_path)
    text = (tmp_path / "semrec.toml").read_text().replace("[data]\n", "[data]\nmax_seq_len = 30\n", 1)
    (tmp_path / "semrec.toml").write_text(text.replace("max_seq_len = 20\n", "", 1))
    result = runner.invoke(app, ["--project", str(tmp_path), "status", "--json"])
    assert result.exit_code == 0, result.output
    assert "data.max_seq_len is now retriever.max_seq_len" in result.stderr
    assert json.loads(result.stdout)["stages"]


def test_a_key_at_both_places_is_refused():
    with pytest.raises(SemrecError, match="data.max_seq_len and retriever.max_seq_len are both set"):
        settings_from_dict({"data": {"max_seq_len": 5}, "retriever": {"max_seq_len": 6}})


def digests(settings) -> dict[str, str]:
    from semrec.workspace import digest_json

    return {name: digest_json(stage_settings(settings, name)) for name in STAGES}


@pytest.mark.parametrize("key, value", [
    ("eval.beam_size", 50), ("eval.ks", [1, 20]), ("eval.split", "valid"), ("eval.batch_size", 7),
])
def test_decoding_settings_never_touch_the_retriever_fingerprint(key, value):
    settings = preset_settings("demo")
    before = digests(settings)
    *tables, last = key.split(".")
    setattr(lookup(settings, ".".join(tables)), last, value)
    after = digests(settings)
    assert after["fit-retriever"] == before["fit-retriever"]
    assert after["eval"] != before["eval"] or key == "eval.batch_size"


@pytest.mark.parametrize("stage, key, on", [
    ("fit-retriever", "retriever.item_embeddings", True),
    ("fit-retriever", "retriever.tie_head", True),
    ("fit-retriever", "retriever.trie_softmax", True),
    ("fit-retriever", "retriever.train.ema_decay", 0.999),
    ("fit-retriever", "retriever.ensemble", 4),
    ("fit-baseline", "baselines.sasrec.train.ema_decay", 0.999),
    ("fit-tokenizer", "tokenizer.train.ema_decay", 0.999),
])
def test_what_was_fitted_before_a_setting_existed_stays_up_to_date(stage, key, on):
    settings = preset_settings("demo")
    *tables, last = key.split(".")

    def fingerprinted_table():  # the stage's settings are keyed by their tables' dotted paths
        chosen = stage_settings(settings, stage)
        owner = max((k for k in chosen if key.startswith(k + ".")), key=len)
        table = chosen[owner]
        for part in key[len(owner) + 1:].split(".")[:-1]:
            table = table[part]
        return table

    assert last not in fingerprinted_table()  # off: the settings (and digest) of a file written before the setting
    setattr(lookup(settings, ".".join(tables)), last, on)
    assert fingerprinted_table()[last] == on


@pytest.mark.parametrize("kind, key, stale", [
    ("rqvae", "tokenizer.hidvae.focal_gamma", False),
    ("rqvae", "tokenizer.rqkmeans.balanced", False),
    ("rqvae", "tokenizer.rqvae.beta", True),
    ("rqvae", "tokenizer.train.checkpoint_every", False),
    ("rqvae", "tokenizer.train.max_minutes", False),
    ("rqkmeans", "tokenizer.rqvae.beta", False),
    ("rqkmeans", "tokenizer.train.steps", False),
    ("rqkmeans", "tokenizer.rqkmeans.balanced", True),
    ("hidvae", "tokenizer.hidvae.focal_gamma", True),
    ("hidvae", "tokenizer.rqvae.beta", True),
])
def test_the_tokenizer_fingerprint_holds_only_the_active_kinds_keys(kind, key, stale):
    settings = preset_settings("demo")
    settings.tokenizer.kind = kind
    before = digests(settings)["fit-tokenizer"]
    *tables, last = key.split(".")
    owner = lookup(settings, ".".join(tables))
    setattr(owner, last, changed_value(getattr(owner, last)))
    assert (digests(settings)["fit-tokenizer"] != before) == stale


def test_the_history_length_belongs_to_the_retriever_not_to_download():
    settings = preset_settings("demo")
    before = digests(settings)
    settings.retriever.max_seq_len = 7
    after = digests(settings)
    assert after["download"] == before["download"] and after["fit-retriever"] != before["fit-retriever"]


def test_a_partial_training_block_keeps_the_stage_s_own_defaults():
    settings = settings_from_dict({"retriever": {"train": {"steps": 7}}, "tokenizer": {"train": {"lr": 0.5}}})
    assert settings.retriever.train.steps == 7 and settings.retriever.train.weight_decay == 0.035
    assert settings.retriever.train.warmup_steps == 500 and settings.tokenizer.train.batch_size == 1024
    assert settings.tokenizer.train.lr == 0.5 and settings.tokenizer.train.steps == 1000
    assert preset_settings("demo").retriever.train.weight_decay == 0.035
