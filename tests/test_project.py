import tomllib

import pytest
from typer.testing import CliRunner

from semrec.cli import app
from semrec.errors import SemrecError
from semrec.project import find_project_file, init_project, load_settings, preset_settings, render_toml, settings_from_dict
from semrec.settings import PRESETS

runner = CliRunner()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_loads_and_round_trips(preset, tmp_path):
    path = init_project(preset, tmp_path)
    text = path.read_text()
    assert "# " in text and "[tokenizer]" in text and "[data.custom]" in text and "[tag.llm]" in text
    assert load_settings(path) == preset_settings(preset)
    assert tomllib.loads(render_toml(load_settings(path))) == tomllib.loads(text)


def test_init_refuses_to_overwrite_without_force(tmp_path):
    init_project("demo", tmp_path)
    with pytest.raises(SemrecError, match="already exists"):
        init_project("beauty", tmp_path)
    init_project("beauty", tmp_path, force=True)
    assert load_settings(tmp_path / "semrec.toml").data.variant == "beauty"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"tokenizer": {"codebok_size": 3}}, "unknown key tokenizer.codebok_size (did you mean 'codebook_size'?)"),
        ({"tokenzer": {}}, "unknown key tokenzer (did you mean 'tokenizer'?)"),
        ({"tokenizer": {"codebook_size": "big"}}, "tokenizer.codebook_size = 'big' must be a whole number"),
        ({"tokenizer": {"kind": "rqvea"}}, "tokenizer.kind = 'rqvea' is not allowed (did you mean 'rqvae'?)"),
        ({"tokenizer": {"levels": 0}}, "tokenizer.levels = 0 is below the minimum 1"),
        ({"retriever": {"dropout": 2.0}}, "retriever.dropout = 2.0 is above the maximum 0.9"),
        ({"embed": {"normalize": "yes"}}, "embed.normalize = 'yes' must be true or false"),
        ({"eval": {"ks": [5, "ten"]}}, "eval.ks = [5, 'ten'] must be a list of int"),
        ({"tag": {"llm": {"model": 3}}}, "tag.llm.model = 3 must be a string"),
        ({"data": 3}, "[data] must be a table"),
    ],
)
def test_bad_values_name_the_key_what_was_given_and_what_is_allowed(raw, expected):
    with pytest.raises(SemrecError) as e:
        settings_from_dict(raw, source="semrec.toml")
    assert expected in str(e.value)


def test_malformed_toml_names_the_line(tmp_path):
    path = tmp_path / "semrec.toml"
    path.write_text("[project]\nname = \"x\"\nseed = = 3\n")
    with pytest.raises(SemrecError, match=r"malformed TOML.*line 3"):
        load_settings(path)


def test_unknown_preset_suggests_the_nearest():
    with pytest.raises(SemrecError) as e:
        preset_settings("beuaty")
    assert "did you mean 'beauty'" in str(e.value)


def test_project_file_is_found_in_a_parent_folder(tmp_path):
    init_project("demo", tmp_path)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project_file(deep) == (tmp_path / "semrec.toml").resolve()
    with pytest.raises(SemrecError, match="no semrec.toml"):
        find_project_file(tmp_path.parent / "elsewhere-that-does-not-exist")


def test_cli_init_and_status_json(tmp_path):
    result = runner.invoke(app, ["init", "demo", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["--project", str(tmp_path / "p"), "status", "--json"])
    assert result.exit_code == 0, result.output
    import json

    stages = {row["stage"]: row["state"] for row in json.loads(result.stdout)["stages"]}
    assert stages == {s: "missing" for s in stages} and "eval" in stages


def test_cli_bad_input_is_one_clear_line_and_exit_code_2(tmp_path):
    (tmp_path / "semrec.toml").write_text("[tokenizer]\nkind = 'vq'\n")
    result = runner.invoke(app, ["--project", str(tmp_path), "status"])
    assert result.exit_code == 2
    assert "tokenizer.kind = 'vq' is not allowed" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["init", "nope", str(tmp_path / "q")])
    assert result.exit_code == 2 and "unknown preset" in result.output


def test_cli_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["init", "demo", str(blocker / "sub")])
    assert result.exit_code == 2 and "cannot" in result.output and "Traceback" not in result.output


def test_messages_are_printed_verbatim_not_read_as_markup(make_workspace):
    ws = make_workspace("demo")
    ws.project.path.write_text(render_toml(ws.settings))
    result = CliRunner().invoke(app, ["--project", str(ws.root), "eval", "--split", "[/x] [redacted]"])
    assert result.exit_code == 2
    assert "'[/x] [redacted]' is not a split" in result.stderr
