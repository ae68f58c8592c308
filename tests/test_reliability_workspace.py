"""Reliability of artifact writing and of the workspace (issue 12, items 1, 6, 7, 11, 12).

A full disk in any writer, a stage that fails before writing, temporary files left by a write
killed with -9, file modes under a umask, two writing commands at once, and a stale retriever.
"""

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from polars.exceptions import ComputeError
from safetensors import SafetensorError
from typer.testing import CliRunner

from semrec.artifacts import EMBEDDINGS, ITEMS, MANIFEST, SEMANTIC_IDS, TOKENIZER
from semrec.cli import app
from semrec.errors import StageFailed
from semrec.io import atomic_path, atomic_write_json, atomic_write_text, write_parquet
from semrec.lock import LOCK_FILE, hold_lock
from semrec.pipeline import STAGES, Stage
from semrec.project import render_toml
from semrec.train import save_checkpoint
from conftest import workspace_at
from test_evaluate import CODEBOOK, TINY, fake_tokenize

REPO = Path(__file__).resolve().parents[1]
SMALL_DEMO = {"data.demo_items": 300, "data.demo_users": 400}
SAFETENSORS_FULL = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
POLARS_FULL = "parquet: File out of specification: underlying IO error: No space left on device (os error 28)"


def demo_project(root: Path, **overrides):
    """A small demo workspace with its project file on disk, as `semrec init demo` would leave it."""
    ws = workspace_at(root, "demo", **{**SMALL_DEMO, **overrides})
    ws.project.path.write_text(render_toml(ws.settings))
    return ws


def semrec(root: Path, *args: str):
    return CliRunner().invoke(app, ["--project", str(root), *args])


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def stage_states(root: Path) -> dict[str, str]:
    result = semrec(root, "status", "--json")
    assert result.exit_code == 0, result.output
    return {row["stage"]: row["state"] for row in json.loads(result.stdout)["stages"]}


# -- 1. a full disk ------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [
    SafetensorError(SAFETENSORS_FULL),
    ComputeError(POLARS_FULL),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos: No space left on device"),
], ids=["safetensors", "polars", "oserror", "quota", "torch"])
def test_full_disk_in_any_writer_is_a_stage_failure_that_keeps_the_previous_file(tmp_path, error):
    target = tmp_path / "artifact.bin"
    target.write_bytes(b"previous")
    with pytest.raises(StageFailed) as raised:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise error
    assert raised.value.exit_code == 1
    assert raised.value.message == f"the disk is full while writing {target}"
    assert "the previous artifact.bin is unchanged and the partial file was removed" in raised.value.hint
    assert target.read_bytes() == b"previous" and temp_files(tmp_path) == []


def test_full_disk_on_a_first_write_says_nothing_was_written(tmp_path):
    with pytest.raises(StageFailed) as raised:
        with atomic_path(tmp_path / "new.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "no new.json was written" in raised.value.hint
    assert list(tmp_path.iterdir()) == []


def test_other_library_errors_pass_through_the_writer_unchanged(tmp_path):
    with pytest.raises(ComputeError, match="schema mismatch"):
        with atomic_path(tmp_path / "t.parquet"):
            raise ComputeError("schema mismatch")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import safetensors.torch

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / "checkpoints" / "last.safetensors"
    save_checkpoint(path, model, optimizer, "fp", {"step": 1})
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(StageFailed, match=f"the disk is full while writing {path}"):
        save_checkpoint(path, model, optimizer, "fp", {"step": 2})
    assert path.read_bytes() == before and temp_files(tmp_path) == []


def test_full_disk_while_writing_json_is_a_stage_failure(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"recall": 0.1})

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(StageFailed, match="the disk is full while writing .*metrics.json"):
        atomic_write_json(target, {"recall": 0.2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"recall": 0.1} and temp_files(tmp_path) == []


def test_full_disk_during_download_exits_1_with_the_file_and_keeps_everything(tmp_path, monkeypatch):
    ws = demo_project(tmp_path / "ws")
    assert semrec(ws.root, "download").exit_code == 0
    items, manifest = ws.path(ITEMS).read_bytes(), ws.path(MANIFEST).read_bytes()

    def full_disk(frame, file, *args, **kwargs):
        Path(file).write_bytes(b"PAR1 partial")
        raise ComputeError(POLARS_FULL)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full_disk)
    result = semrec(ws.root, "download", "--force")
    assert result.exit_code == 1, result.output
    assert f"the disk is full while writing {ws.path(ITEMS)}" in result.stderr
    assert "the previous items.parquet is unchanged" in result.stderr
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert ws.path(ITEMS).read_bytes() == items and ws.path(MANIFEST).read_bytes() == manifest
    assert temp_files(ws.root) == []


def test_full_disk_while_writing_embeddings_exits_1_and_embed_stays_done(tmp_path, monkeypatch, no_sentence_model):
    import safetensors.torch

    model = tmp_path / "model"
    model.mkdir()
    ws = demo_project(tmp_path / "ws", **{"embed.model": str(model)})
    assert semrec(ws.root, "embed").exit_code == 0
    embeddings, manifest = ws.path(EMBEDDINGS).read_bytes(), ws.path(MANIFEST).read_bytes()
    real_save = safetensors.torch.save_file

    def full_disk_in_the_workspace(tensors, filename, metadata=None):
        if Path(filename).parent == ws.root:
            raise SafetensorError(SAFETENSORS_FULL)
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_in_the_workspace)
    result = semrec(ws.root, "embed", "--force")
    assert result.exit_code == 1, result.output
    assert f"the disk is full while writing {ws.path(EMBEDDINGS)}" in result.stderr
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert ws.path(EMBEDDINGS).read_bytes() == embeddings and ws.path(MANIFEST).read_bytes() == manifest
    assert temp_files(ws.root) == [] and stage_states(ws.root)["embed"] == "done"


# -- 7. a stage that fails at once leaves the manifest as it was ---------------------------------
def test_stage_failing_at_once_leaves_the_manifest_exactly_as_it_was(tmp_path, no_sentence_model):
    model = tmp_path / "model"
    model.mkdir()
    ws = demo_project(tmp_path / "ws", **{"embed.model": str(model)})
    assert semrec(ws.root, "embed").exit_code == 0
    manifest = ws.path(MANIFEST).read_bytes()
    good = ws.project.path.read_text()
    ws.project.path.write_text(good.replace(str(model), str(tmp_path / "not-available-offline")))

    result = semrec(ws.root, "fit-tokenizer")
    assert result.exit_code == 2 and "embed: stale" in result.stderr and "nothing there" in result.stderr
    assert ws.path(MANIFEST).read_bytes() == manifest
    ws.project.path.write_text(good)
    states = stage_states(ws.root)
    assert states["download"] == "done" and states["embed"] == "done"


def train_until_interrupted(ws, run):
    atomic_write_text(ws.path("model") / "checkpoints" / "last.txt", "step 5")
    if run.options.get("interrupt"):
        raise KeyboardInterrupt
    atomic_write_text(ws.path("model") / "weights.txt", "trained")


def test_stage_interrupted_after_a_checkpoint_stays_missing_so_a_plain_rerun_resumes(tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "download", Stage(
        "download", f"{__name__}:train_until_interrupted", lambda s: ("data",), ("model",), lambda s: ()))
    ws = demo_project(tmp_path / "ws")
    ws.ensure("download")
    with pytest.raises(KeyboardInterrupt):
        ws.ensure("download", force=True, options={"interrupt": True})
    assert ws.state("download").state == "missing"


def server_never_answered(ws, run):
    raise StageFailed("the server never answered")


def test_failing_first_run_writes_no_manifest(tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "download", dataclasses.replace(STAGES["download"], run=f"{__name__}:server_never_answered"))
    ws = demo_project(tmp_path / "ws")
    with pytest.raises(StageFailed):
        ws.ensure("download")
    assert not ws.path(MANIFEST).exists()


# -- 11. temporary files and modes ---------------------------------------------------------------
KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys
    from semrec.io import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half an artifact")
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_temp_file_of_a_write_killed_with_sigkill_is_removed_when_a_command_locks_the_workspace(tmp_path):
    ws = demo_project(tmp_path / "ws")
    (ws.root / "retriever" / "checkpoints").mkdir(parents=True)
    for target in (ws.path(ITEMS), ws.path(MANIFEST), ws.root / "retriever" / "checkpoints" / "last.safetensors"):
        killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target)], cwd=REPO)
        assert killed.returncode == -signal.SIGKILL
    assert len(temp_files(ws.root)) == 3
    mine = [ws.root / "notes.tmp", ws.root / ".hidden.tmp", ws.root / "data" / "export.12345678.tmp"]
    for path in mine:
        path.write_text("the user's own")
    newer = ws.root / ".items.parquet.abcd1234.tmp"
    newer.write_text("a write that started after the lock was taken")
    os.utime(newer, (time.time() + 60, time.time() + 60))

    with ws.lock("semrec test"):
        assert sorted(temp_files(ws.root)) == sorted([p.name for p in mine] + [newer.name])
    assert "removed 3 temporary file(s)" in ws.reporter.text()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_artifacts_are_written_with_the_mode_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        write_parquet(pl.DataFrame({"item": [1, 2]}), tmp_path / "ids.parquet")
    finally:
        os.umask(previous)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "ids.parquet").stat().st_mode & 0o777 == mode


# -- 12. one writing command at a time -----------------------------------------------------------
HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from semrec.lock import hold_lock
    with hold_lock(sys.argv[1], "semrec fit-retriever"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold_in_another_process(folder: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder), str(seconds)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_writing_command_exits_2_naming_the_holder_and_a_killed_holders_lock_is_taken(tmp_path):
    ws = demo_project(tmp_path / "ws")
    holder = hold_in_another_process(ws.root, 120)
    try:
        result = semrec(ws.root, "download")
        assert result.exit_code == 2, result.output
        assert f"in use by pid {holder.pid} (semrec fit-retriever)" in result.stderr
        assert "semrec --wait download" in result.stderr
        assert not ws.path(ITEMS).exists()
        assert semrec(ws.root, "status").exit_code == 0  # reading needs no lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = semrec(ws.root, "download")
    assert result.exit_code == 0, result.output
    assert ws.path(ITEMS).exists() and (ws.root / LOCK_FILE).read_text() == ""


def test_wait_option_starts_when_the_holder_finishes(tmp_path):
    ws = demo_project(tmp_path / "ws")
    holder = hold_in_another_process(ws.root, 1.5)
    try:
        result = semrec(ws.root, "--wait", "download")
    finally:
        holder.wait()
    assert result.exit_code == 0, result.output
    assert f"in use by pid {holder.pid} (semrec fit-retriever); waiting for it to finish" in result.stderr
    assert stage_states(ws.root)["download"] == "done"


def test_lock_records_its_holder_while_held_and_is_released_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with hold_lock(tmp_path, "semrec eval"):
            assert json.loads((tmp_path / LOCK_FILE).read_text()) == {"pid": os.getpid(), "command": "semrec eval"}
            raise RuntimeError("the command failed")
    with hold_lock(tmp_path, "semrec eval"):
        pass


# -- 6. a stale retriever ------------------------------------------------------------------------
def shifted_fit_tokenizer(ws, run) -> dict:
    """A synthetic tokenizer whose IDs depend on a tokenizer setting, so refitting it changes them."""
    atomic_write_json(ws.path(TOKENIZER) / "config.json", {
        "kind": "synthetic", "levels": 3, "codebook_size": CODEBOOK, "shift": ws.settings.tokenizer.kmeans_iters % CODEBOOK})
    return {}


def shifted_tokenize(ws, run) -> dict:
    fake_tokenize(ws, run)
    shift = json.loads((ws.path(TOKENIZER) / "config.json").read_text())["shift"]
    ids = pl.read_parquet(ws.path(SEMANTIC_IDS)).with_columns((pl.col("code_3") + shift) % CODEBOOK)
    write_parquet(ids, ws.path(SEMANTIC_IDS))
    return {}


@pytest.mark.slow
def test_recommend_after_refitting_the_tokenizer_retokenizes_and_retrains_first(tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "fit-tokenizer", dataclasses.replace(
        STAGES["fit-tokenizer"], run=f"{__name__}:shifted_fit_tokenizer", upstream=lambda settings: ("download",)))
    monkeypatch.setitem(STAGES, "tokenize", dataclasses.replace(STAGES["tokenize"], run=f"{__name__}:shifted_tokenize"))
    tiny_training = {"retriever.train.steps": 10, "retriever.eval_every": 10, "retriever.user_bins": 50}
    ws = demo_project(tmp_path / "ws", **{**TINY, **tiny_training})
    assert semrec(ws.root, "fit-retriever").exit_code == 0
    old_ids = pl.read_parquet(ws.path(SEMANTIC_IDS))
    ws.project.path.write_text(ws.project.path.read_text().replace("kmeans_iters = 50", "kmeans_iters = 53"))
    assert semrec(ws.root, "fit-tokenizer").exit_code == 0
    assert stage_states(ws.root)["fit-retriever"] == "stale"

    result = semrec(ws.root, "recommend", "--user", "U00007", "--k", "3", "--json")
    assert result.exit_code == 0, result.output
    assert "tokenize: stale (upstream fit-tokenizer was rerun); running it first" in result.stderr
    assert "fit-retriever: stale" in result.stderr
    new_ids = pl.read_parquet(ws.path(SEMANTIC_IDS))
    assert not new_ids.equals(old_ids)
    keys = pl.read_parquet(ws.path(ITEMS), columns=["item", "item_key"])
    for row in json.loads(result.stdout)["items"]:
        item = keys.filter(pl.col("item_key") == row["item_key"])["item"][0]
        assert row["semantic_id"] == list(new_ids.filter(pl.col("item") == item).drop("item").row(0))
    states = stage_states(ws.root)
    assert states["tokenize"] == "done" and states["fit-retriever"] == "done"
