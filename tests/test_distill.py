"""Learning SASRec's ranking (retriever.distill_weight): soft targets that multiply to the teacher's item
probabilities, a teacher that sees only the history, and fit-retriever depending on the trained SASRec."""

import pytest
import torch

from semrec.artifacts import SASREC
from semrec.baselines.fit import MODEL_FILE
from semrec.baselines.sasrec import SASRec, SASRecConfig
from semrec.errors import SemrecError
from semrec.io import write_weights
from semrec.pipeline import STAGES, stage_settings
from semrec.project import preset_settings
from semrec.retriever import distill
from semrec.retriever.data import Batches
from semrec.retriever.distill import SoftTargetTable, soft_cross_entropy
from semrec.retriever.fit import build_task
from test_collaborative_ids import SASREC_SMALL
from test_evaluate import prepared_workspace, use_synthetic_tokenizer

DISTILL = {"retriever.arch": "item-level", "retriever.item_embeddings": True, "retriever.distill_weight": 0.5}


def save_random_sasrec(ws, n_items: int, seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=n_items, max_seq_len=10, d_model=16, layers=1, ff_dim=32, dropout=0.0))
    with torch.no_grad():
        model.item.weight.mul_(4)  # a peaked distribution, far from uniform
    write_weights(ws.path(SASREC) / MODEL_FILE, model.state_dict(), {"config": model.cfg.to_dict()})
    return model.eval()


@pytest.fixture
def distilling(make_workspace):
    ws = prepared_workspace(make_workspace, **DISTILL)
    sasrec = save_random_sasrec(ws, n_items=300)
    task, ids = build_task(ws, torch.device("cpu"))
    return task, ids, sasrec


def test_soft_targets_multiply_to_the_teachers_probability_of_the_target(distilling):
    task, ids, _ = distilling
    piece = task.batch(0)[0]
    teacher = task.teacher
    soft = teacher.soft_targets(piece)
    probs = teacher.item_probabilities(piece)
    items = teacher.item_ids(piece.items)
    assert torch.equal(ids.codes[items[items >= 0]], piece.items[items >= 0])  # codes walk back to their items
    target_codes, target_items = piece.items[piece.targets], items[piece.targets]
    for q in soft:
        torch.testing.assert_close(q.sum(1), torch.ones(len(q)))
    product = torch.stack([q.gather(1, target_codes[:, p : p + 1])[:, 0] for p, q in enumerate(soft)]).prod(0)
    torch.testing.assert_close(product, probs.gather(1, target_items[:, None])[:, 0])
    assert float(probs.max(1).values.mean()) > 10 / 300  # the test's teacher is not uniform


def test_soft_targets_are_the_teachers_mass_under_each_prefix_by_brute_force(distilling):
    task, ids, _ = distilling
    piece = task.batch(1)[0]
    probs = task.teacher.item_probabilities(piece)
    target = piece.items[piece.targets]
    same_prefix = torch.ones_like(probs, dtype=torch.bool)
    for p, q in enumerate(task.teacher.soft_targets(piece)):
        mass = torch.zeros(len(probs), q.shape[1]).scatter_add_(1, ids.codes[:, p].expand_as(probs), probs * same_prefix)
        torch.testing.assert_close(q, mass / mass.sum(1, keepdim=True), atol=1e-6, rtol=1e-5)
        same_prefix &= ids.codes[None, :, p] == target[:, p : p + 1]


def test_the_teacher_reads_only_the_items_before_each_target(distilling):
    task, _, sasrec = distilling
    piece = task.batch(0)[0]
    teacher = task.teacher
    probs = teacher.item_probabilities(piece)
    items = teacher.item_ids(piece.items)
    rows, columns = piece.targets.nonzero(as_tuple=True)
    for m in range(0, len(rows), 7):
        r, t = int(rows[m]), int(columns[m])
        alone = torch.softmax(sasrec.scores(sasrec.hidden(items[r : r + 1, :t])[:, -1]), -1)[0]
        torch.testing.assert_close(probs[m], alone, atol=1e-6, rtol=1e-5)


def test_the_table_gives_every_step_the_teachers_soft_targets(distilling):
    task, _, _ = distilling
    assert isinstance(task.soft_targets, SoftTargetTable)  # computed once, before training
    for step in (0, 3, 11):
        for piece in task.batch(step):
            for cached, fresh in zip(task.soft_targets(piece), task.teacher.soft_targets(piece), strict=True):
                torch.testing.assert_close(cached, fresh, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("trim", [True, False])
def test_each_training_item_knows_its_place_in_the_packed_items(distilling, trim):
    task, ids, _ = distilling
    sequences = task.batches.sequences
    batches = Batches(ids, sequences, torch.device("cpu"), seed=0, pieces=3, trim=trim)
    for piece in batches.training(torch.arange(len(sequences)), step=0):
        real = piece.items[..., 0] >= 0
        assert torch.equal(real, piece.source >= 0)
        assert torch.equal(ids.codes[sequences.flat[piece.source[real]]], piece.items[real])


def test_a_table_too_large_to_keep_leaves_the_teacher_to_run_at_every_step(make_workspace, monkeypatch):
    monkeypatch.setattr(distill, "SOFT_TARGET_TABLE_BYTES", 0)
    ws = prepared_workspace(make_workspace, **DISTILL)
    save_random_sasrec(ws, n_items=300)
    task, _ = build_task(ws, torch.device("cpu"))
    assert task.soft_targets == task.teacher.soft_targets


def test_soft_cross_entropy_of_a_one_hot_target_is_the_cross_entropy_and_skips_ruled_out_tokens():
    logits = [torch.randn(5, 7, generator=torch.Generator().manual_seed(0))]
    target = torch.tensor([0, 3, 6, 2, 2])
    one_hot = [torch.nn.functional.one_hot(target, 7).float()]
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), torch.nn.functional.cross_entropy(logits[0], target))
    ruled_out = [logits[0].masked_fill(torch.arange(7) == 5, float("-inf"))]
    assert torch.isfinite(soft_cross_entropy(ruled_out, one_hot))


def test_on_in_the_amazon_presets_off_in_the_demo_and_on_it_makes_fit_retriever_depend_on_sasrec():
    assert preset_settings("beauty").retriever.distill_weight == 0.5
    settings = preset_settings("demo")
    assert settings.retriever.distill_weight == 0
    assert "distill_weight" not in stage_settings(settings, "fit-retriever")["retriever"]
    assert "fit-baseline" not in STAGES["fit-retriever"].upstream(settings)
    settings.retriever.distill_weight = 0.5
    assert stage_settings(settings, "fit-retriever")["retriever"]["distill_weight"] == 0.5
    assert "fit-baseline" in STAGES["fit-retriever"].upstream(settings)


def test_without_a_trained_sasrec_it_says_to_train_one(make_workspace):
    ws = prepared_workspace(make_workspace, **DISTILL)
    with pytest.raises(SemrecError, match="(?s)no trained SASRec.*semrec fit-baseline"):
        build_task(ws, torch.device("cpu"))


def test_the_teacher_changes_what_the_retriever_learns(make_workspace):
    def trained_loss(weight: float) -> float:
        ws = prepared_workspace(make_workspace, **{**DISTILL, "retriever.distill_weight": weight})
        save_random_sasrec(ws, n_items=300)
        task, _ = build_task(ws, torch.device("cpu"))
        optimizer = torch.optim.AdamW(task.model.parameters(), lr=0.01)
        for step in range(5):
            loss, _ = task.loss(task.batch(step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        task.model.eval()
        with torch.no_grad():
            return task.validation_loss()  # the hard cross-entropy on the validation targets

    alone, taught = trained_loss(0.0), trained_loss(0.9)
    assert taught != pytest.approx(alone, abs=1e-3)


@pytest.mark.slow
def test_fit_retriever_trains_sasrec_first_and_is_stale_when_sasrec_changes(make_workspace, monkeypatch):
    use_synthetic_tokenizer(monkeypatch)
    ws = prepared_workspace(make_workspace, **DISTILL, **SASREC_SMALL, **{"retriever.train.steps": 20})
    ws.ensure("fit-retriever")
    assert ws.state("fit-baseline").state == "done"  # run as an upstream stage
    assert ws.state("fit-retriever").state == "done"
    ws.project.settings.baselines.sasrec.dropout = 0.1  # another teacher: the retriever is out of date
    assert ws.state("fit-retriever").state == "stale"
