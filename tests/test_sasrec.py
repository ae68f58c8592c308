"""The SASRec baseline: it learns, ranks exactly, resumes exactly, and trains as its own stage."""

import json

import pytest
import torch
from typer.testing import CliRunner

from semrec.baselines.fit import SASRecTask, load_sasrec
from semrec.baselines.sasrec import SASRec, SASRecConfig, rank_items
from semrec.cli import app
from semrec.metrics import recall_at_k
from semrec.project import render_toml
from semrec.report import RecordingReporter
from semrec.retriever.data import Sequences
from semrec.train import TrainConfig, train

N_ITEMS = 40


def successor_sequences(users: int = 300, length: int = 12, max_seq_len: int = 10, seed: int = 0) -> Sequences:
    """Every user walks i -> (3 i + 1) mod N from a random start: the next item is a function of the last."""
    start = torch.randint(0, N_ITEMS, (users,), generator=torch.Generator().manual_seed(seed))
    walk = [start]
    for _ in range(length + 1):
        walk.append((3 * walk[-1] + 1) % N_ITEMS)
    walk = torch.stack(walk, 1)  # (U, length + 2)
    return Sequences(flat=walk[:, :length].reshape(-1), lengths=torch.full((users,), length), valid=walk[:, length],
                     test=walk[:, length + 1], users=torch.arange(users), bins=torch.full((users,), -1),
                     max_seq_len=max_seq_len)


def tiny(loss: str = "full", dropout: float = 0.0, **extra) -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(n_items=N_ITEMS, max_seq_len=10, d_model=32, layers=1, heads=2, ff_dim=64,
                               dropout=dropout, loss=loss, **extra))


def fit(model, sequences, tmp_path, steps: int, **config) -> SASRecTask:
    task = SASRecTask(model, sequences, torch.device("cpu"), batch_size=32, seed=0, valid_users=0)
    train(task, TrainConfig(steps=steps, lr=config.pop("lr", 0.01), eval_every=config.pop("eval_every", 0),
                            **config), tmp_path, "fp", RecordingReporter())
    return task


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_sasrec_learns_a_deterministic_successor_to_near_perfect_recall_at_1(tmp_path, loss):
    sequences = successor_sequences()
    model = tiny(loss, negatives=16)
    fit(model, sequences, tmp_path, steps=150)
    histories, targets = sequences.split_items("test")
    assert recall_at_k(rank_items(model, histories, 1), targets, 1) > 0.95


def test_ranking_equals_scoring_each_unpadded_history_alone():
    model = tiny()
    histories = torch.tensor([[-1, -1, 3, 7, 1], [4, 8, 15, 16, 23], [-1, -1, -1, -1, 9]])
    ranked = rank_items(model, histories, k=N_ITEMS, batch_size=2)
    model.eval()
    with torch.no_grad():
        for row, history in enumerate(histories):
            alone = history[history >= 0][None]  # no padding at all
            scores = model.scores(model.hidden(alone)[:, -1])[0]
            expected = torch.argsort(scores, descending=True)
            assert torch.equal(ranked[row, :5], expected[:5])
            torch.testing.assert_close(scores[ranked[row]], scores[expected])


def test_sampled_softmax_over_the_whole_catalogue_with_uniform_q_is_the_full_softmax():
    model = tiny()
    states, targets = torch.randn(6, 32), torch.tensor([0, 5, 9, 39, 5, 12])
    uniform = torch.full((N_ITEMS,), -torch.log(torch.tensor(float(N_ITEMS))))
    sampled = model.loss(states, targets, negatives=torch.arange(N_ITEMS), log_q=uniform)
    torch.testing.assert_close(sampled, model.loss(states, targets))


def test_resume_continues_exactly(tmp_path):
    sequences = successor_sequences(users=100)
    straight = tiny(dropout=0.3)
    fit(straight, sequences, tmp_path / "a", steps=20, checkpoint_every=10)
    resumed = tiny(dropout=0.3)
    fit(resumed, sequences, tmp_path / "b", steps=10, checkpoint_every=10)
    resumed = tiny(dropout=0.3)  # a new process: fresh weights, restored from the checkpoint
    fit(resumed, sequences, tmp_path / "b", steps=20, checkpoint_every=10)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


SMALL = {"data.demo_items": 300, "data.demo_users": 400, "baselines.sasrec.max_seq_len": 10,
         "baselines.sasrec.d_model": 32, "baselines.sasrec.dropout": 0.2, "baselines.sasrec.train.steps": 60,
         "baselines.sasrec.eval_every": 20, "baselines.sasrec.train.checkpoint_every": 20,
         "baselines.sasrec.device": "cpu"}


def test_fit_baseline_is_a_stage_of_its_own(make_workspace):
    ws = make_workspace("demo", **SMALL)
    ws.project.path.write_text(render_toml(ws.settings))
    runner = CliRunner()
    first = runner.invoke(app, ["--project", str(ws.root), "fit-baseline", "--json"])
    assert first.exit_code == 0, first.output
    figures = json.loads(first.stdout)
    assert figures["steps"] == 60 and figures["valid_ndcg@10"] > 0 and figures["targets_per_s"] > 0
    assert "fit-retriever" not in first.stderr  # it needs the data only, not semantic IDs
    history = json.loads(ws.path("baselines/sasrec/metrics.json").read_text())["history"]
    assert [entry["step"] for entry in history if "valid_score" in entry] == [20, 40, 60]
    model, meta = load_sasrec(ws, torch.device("cpu"))
    assert model.cfg.d_model == 32 and meta["steps"] == 60

    again = runner.invoke(app, ["--project", str(ws.root), "fit-baseline"])
    assert again.exit_code == 0 and "up to date" in again.stderr
    text = ws.project.path.read_text().replace("dropout = 0.2", "dropout = 0.1")
    ws.project.path.write_text(text)
    status = runner.invoke(app, ["--project", str(ws.root), "status", "--json"])
    states = {row["stage"]: row["state"] for row in json.loads(status.stdout)["stages"]}
    assert states["fit-baseline"] == "stale" and states["download"] == "done"


def test_unknown_baseline_is_refused_with_the_choices(make_workspace):
    ws = make_workspace("demo", **SMALL)
    ws.project.path.write_text(render_toml(ws.settings))
    result = CliRunner().invoke(app, ["--project", str(ws.root), "eval", "--baselines", "popularity,bpr"])
    assert result.exit_code == 2
    assert "'bpr'" in result.stderr and "popularity, sasrec" in result.stderr
