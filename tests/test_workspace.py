import json

import pytest

import semrec.workspace as workspace_module
from semrec.pipeline import Stage
from semrec.io import atomic_path, atomic_write_text

CALLS: list[str] = []


def stage_a(ws, run):
    CALLS.append("a")
    atomic_write_text(ws.path("a.txt"), f"a {ws.settings.embed.model}")
    return {"value": 1}


def stage_b(ws, run):
    CALLS.append("b")
    atomic_write_text(ws.path("b.txt"), ws.path("a.txt").read_text() + " b")
    return {}


def stage_c(ws, run):
    CALLS.append("c")
    if run.options.get("fail"):
        raise RuntimeError("interrupted")
    atomic_write_text(ws.path("c.txt"), ws.path("b.txt").read_text() + f" c{ws.settings.eval.ks}")
    if run.options.get("fail_after_writing"):
        raise RuntimeError("interrupted")
    return {}


@pytest.fixture
def chain(monkeypatch):
    stages = {
        "a": Stage("a", f"{__name__}:stage_a", lambda s: ("embed",), ("a.txt",), lambda s: ()),
        "b": Stage("b", f"{__name__}:stage_b", lambda s: ("tag", "-tag.min_count"), ("b.txt",), lambda s: ("a",)),
        "c": Stage("c", f"{__name__}:stage_c", lambda s: ("eval",), ("c.txt",), lambda s: ("b",)),
    }
    monkeypatch.setattr(workspace_module, "STAGES", stages)
    CALLS.clear()
    return stages


def states(ws):
    return {name: ws.state(name).state for name in ("a", "b", "c")}


def test_missing_upstream_runs_first_and_says_so(chain, make_workspace):
    ws = make_workspace()
    ws.ensure("c")
    assert CALLS == ["a", "b", "c"]
    assert "a: missing" in ws.reporter.text() and "running it first" in ws.reporter.text()
    assert states(ws) == {"a": "done", "b": "done", "c": "done"}


def test_unchanged_stage_is_skipped_and_force_reruns_only_it(chain, make_workspace):
    ws = make_workspace()
    ws.ensure("c")
    CALLS.clear()
    ws.ensure("c")
    assert CALLS == [] and "up to date, skipped" in ws.reporter.text()
    ws.ensure("c", force=True)
    assert CALLS == ["c"]


def test_changed_setting_makes_stage_and_downstream_stale(chain, make_workspace):
    ws = make_workspace()
    ws.ensure("c")
    ws.settings.embed.model = "another-model"
    assert states(ws) == {"a": "stale", "b": "stale", "c": "stale"}
    CALLS.clear()
    ws.ensure("c")
    assert CALLS == ["a", "b", "c"]
    assert ws.path("c.txt").read_text().startswith("a another-model b")


def test_setting_left_out_of_the_fingerprint_changes_nothing(chain, make_workspace):
    ws = make_workspace()
    ws.ensure("c")
    ws.settings.tag.min_count = 99
    assert states(ws) == {"a": "done", "b": "done", "c": "done"}
    ws.settings.tag.levels = 2
    assert states(ws) == {"a": "done", "b": "stale", "c": "stale"}


def test_stage_interrupted_before_writing_keeps_its_record_and_previous_artifact(chain, make_workspace):
    ws = make_workspace()
    ws.ensure("c")
    before = ws.path("c.txt").read_text()
    with pytest.raises(RuntimeError):
        ws.ensure("c", force=True, options={"fail": True})
    assert ws.path("c.txt").read_text() == before
    assert states(ws) == {"a": "done", "b": "done", "c": "done"}


def test_stage_interrupted_after_writing_is_missing(chain, make_workspace):
    ws = make_workspace()
    ws.ensure("c")
    with pytest.raises(RuntimeError):
        ws.ensure("c", force=True, options={"fail_after_writing": True})
    assert ws.state("c").state == "missing"
    assert ws.state("b").state == "done"


def test_artifact_changed_on_disk_is_stale(chain, make_workspace):
    ws = make_workspace()
    ws.ensure("b")
    ws.path("a.txt").write_text("edited by hand, longer than before")
    assert ws.state("a").state == "stale" and ws.state("b").state == "stale"


def test_interrupted_write_leaves_previous_file_intact(tmp_path):
    target = tmp_path / "artifact.json"
    target.write_text(json.dumps({"good": True}))
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["artifact.json"]


def test_status_lists_every_stage_with_sizes_and_figures(chain, make_workspace):
    ws = make_workspace()
    ws.ensure("a")
    rows = {row["stage"]: row for row in ws.status()}
    assert rows["a"]["state"] == "done" and rows["a"]["figures"] == {"value": 1}
    assert rows["a"]["artifacts"]["a.txt"] > 0 and rows["c"]["artifacts"]["c.txt"] is None
