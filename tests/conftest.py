"""Shared fixtures: every test runs with its own cache folder and workspace under tmp_path."""

import re
import shutil
import zlib
from pathlib import Path

import pytest
import torch

from semrec.pipeline import lookup
from semrec.project import Project, load_project, preset_settings
from semrec.report import RecordingReporter
from semrec.workspace import Workspace

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test reads or writes the user's cache, and none reaches a model hub."""
    monkeypatch.setenv("SEMREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATASETS} is absent (it lies beside the repo in CI)")
    return SHARED_DATASETS


def workspace_at(root: Path, preset: str = "demo", **overrides) -> Workspace:
    """A Workspace in `root` with a preset's settings and {"section.key": value} overrides, recording messages."""
    settings = preset_settings(preset)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        setattr(lookup(settings, ".".join(parents)), last, value)
    root.mkdir(parents=True, exist_ok=True)
    return Workspace(Project(path=root / "semrec.toml", settings=settings), RecordingReporter())


def copied_workspace(source: Path, root: Path) -> Workspace:
    """A copy at `root` of the workspace in `source`, for a test that changes it; messages recorded."""
    shutil.copytree(source, root)
    return Workspace(load_project(explicit=root), RecordingReporter())


@pytest.fixture
def make_workspace(tmp_path):
    """make_workspace(preset, **{"section.key": value}) -> a Workspace in its own folder."""
    counter = iter(range(1000))
    return lambda preset="demo", **overrides: workspace_at(tmp_path / f"ws{next(counter)}", preset, **overrides)


def fake_encode(settings, texts, reporter=None, *, normalize=None):
    """A deterministic stand-in for the sentence model: a hashed bag of words in 64 dimensions."""
    x = torch.full((len(texts), 64), 0.01)
    for row, text in enumerate(texts):
        for word in re.split(r"[\s>]+", text.lower()):
            if word:
                x[row, zlib.crc32(word.encode()) % 64] += 1.0
    normalize = settings.normalize if normalize is None else normalize
    return torch.nn.functional.normalize(x, dim=1) if normalize else x


@pytest.fixture
def no_sentence_model(monkeypatch):
    """Tags and tokenizer tests embed tag texts with `fake_encode` instead of loading the real model."""
    from semrec import embed

    monkeypatch.setattr(embed, "encode_texts", fake_encode)
    monkeypatch.setattr(embed, "load_model", lambda settings: None)
