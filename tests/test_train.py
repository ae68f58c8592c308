import pytest
import torch

from semrec.errors import StageFailed
from semrec.train import TrainConfig, epoch_indices, learning_rate, train


class RegressionTask:
    """A tiny regression with dropout, so resume must restore the RNG as well as the weights."""

    def __init__(self, seed=0, nan_at=None, scores=None):
        self.x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
        self.nan_at = nan_at
        self.scores = list(scores) if scores else None
        self.steps_seen = []

    def batch(self, step):
        idx = epoch_indices(len(self.x), 16, step, seed=7)
        return self.x[idx], self.y[idx]

    def loss(self, batch):
        x, y = batch
        self.steps_seen.append(len(self.steps_seen))
        mse = ((self.model(x).squeeze(-1) - y) ** 2).mean()
        if self.nan_at is not None and len(self.steps_seen) > self.nan_at:
            mse = mse * float("nan")
        return mse, {"mse": mse.detach()}


class ValidatedTask(RegressionTask):
    def validate(self):
        return {"score": self.scores.pop(0)}


def config(steps, **kw):
    return TrainConfig(steps=steps, lr=1e-2, warmup_steps=2, schedule="cosine", checkpoint_every=5, **kw)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_matches_uninterrupted_run(tmp_path, ema_decay):
    whole = RegressionTask()
    train(whole, config(12, ema_decay=ema_decay), tmp_path / "a", "fp")

    interrupted = RegressionTask()
    with pytest.raises(KeyboardInterrupt):
        original = interrupted.loss

        def loss_then_interrupt(batch):
            if len(interrupted.steps_seen) == 7:
                raise KeyboardInterrupt
            return original(batch)

        interrupted.loss = loss_then_interrupt
        train(interrupted, config(12, ema_decay=ema_decay), tmp_path / "b", "fp")
    resumed = RegressionTask(seed=123)  # different initial weights: all must come from the checkpoint
    result = train(resumed, config(12, ema_decay=ema_decay), tmp_path / "b", "fp")
    assert result.steps == 12
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    train(RegressionTask(), config(5), tmp_path, "fp-1")
    again = RegressionTask()
    result = train(again, config(5), tmp_path, "fp-2")
    assert len(again.steps_seen) == 5 and result.steps == 5


def test_nan_loss_stops_with_the_step_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(StageFailed) as e:
        train(RegressionTask(nan_at=7), config(12), tmp_path, "fp")
    assert "mse" in e.value.message and "step 7" in e.value.message
    assert "step 5" in e.value.hint
    assert (tmp_path / "last.safetensors").exists()


def test_early_stopping_keeps_best_weights(tmp_path):
    task = ValidatedTask(scores=[0.1, 0.5, 0.4, 0.3, 0.2, 0.1])
    result = train(task, config(30, eval_every=2, patience=2), tmp_path, "fp")
    assert result.stopped_early and result.steps == 8
    assert result.best["step"] == 4 and result.best["score"] == 0.5


def test_epoch_indices_cover_every_example_once_per_epoch():
    batches = torch.cat([epoch_indices(40, 10, step, seed=3) for step in range(4)])
    assert sorted(batches.tolist()) == list(range(40))
    assert torch.equal(epoch_indices(40, 10, 5, seed=3), epoch_indices(40, 10, 5, seed=3))
    assert not torch.equal(epoch_indices(40, 10, 0, seed=3), epoch_indices(40, 10, 4, seed=3))


@pytest.mark.parametrize("schedule", ["constant", "cosine", "inverse_sqrt"])
def test_learning_rate_warms_up_then_never_exceeds_peak(schedule):
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule=schedule)
    rates = [learning_rate(s, cfg) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert max(rates) <= 1.0 and min(rates) > 0
    if schedule != "constant":
        assert rates[-1] < rates[10]


def test_time_limit_stops_with_a_validated_checkpoint(tmp_path):
    task = ValidatedTask(scores=[0.3, 0.2])
    result = train(task, config(1000, max_seconds=1e-9), tmp_path, "fp")
    assert result.steps == 1 and result.best == {"step": 1, "score": 0.3}
    assert (tmp_path / "last.safetensors").exists()


def test_a_run_stopped_by_its_time_limit_stays_stopped_when_resumed(tmp_path):
    """An ensemble's finished members are resumed this way: nothing may move, not even one more step."""
    stopped = ValidatedTask(scores=[0.3])
    train(stopped, config(1000, max_seconds=1e-9), tmp_path, "fp")
    again = ValidatedTask(scores=[], seed=5)
    result = train(again, config(1000, max_seconds=1e-9), tmp_path, "fp")
    assert result.steps == 1 and again.steps_seen == [] and result.best == {"step": 1, "score": 0.3}
    for a, b in zip(stopped.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


class RecordingTask(ValidatedTask):
    """Records the weights after every step, and the weights that validation sees."""

    def __init__(self, scores=()):
        super().__init__(scores=scores)
        self.initial = [p.detach().clone() for p in self.model.parameters()]
        self.trajectory, self.validated = [], []

    def after_step(self, step, batch):
        self.trajectory.append([p.detach().clone() for p in self.model.parameters()])

    def validate(self):
        self.validated.append([p.detach().clone() for p in self.model.parameters()])
        return super().validate()


def moving_average(initial, trajectory, decay):
    average = [w.clone() for w in initial]
    for step, weights in enumerate(trajectory):
        d = min(decay, (1 + step) / (10 + step))
        average = [d * a + (1 - d) * w for a, w in zip(average, weights)]
    return average


def test_weight_average_is_validated_and_kept_without_changing_the_training_path(tmp_path):
    plain = RecordingTask(scores=[0.1, 0.2, 0.3])
    train(plain, config(15, eval_every=5), tmp_path / "plain", "fp")
    averaged = RecordingTask(scores=[0.1, 0.3, 0.2])  # best at step 10
    result = train(averaged, config(15, eval_every=5, ema_decay=0.8), tmp_path / "averaged", "fp")

    for a, b in zip(plain.trajectory, averaged.trajectory):  # the optimizer follows the weights themselves
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for step, seen in zip([5, 10, 15], averaged.validated):
        expected = moving_average(averaged.initial, averaged.trajectory[:step], 0.8)
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(seen, expected))
        assert not all(torch.allclose(x, y) for x, y in zip(seen, averaged.trajectory[step - 1]))
    assert result.best["step"] == 10
    kept = list(averaged.model.parameters())  # the best validated average, not the last weights
    assert all(torch.allclose(x, y) for x, y in zip(kept, averaged.validated[1]))


def test_weight_average_is_kept_when_nothing_validates(tmp_path):
    task = RegressionTask()
    trajectory = []
    task.after_step = lambda step, batch: trajectory.append([p.detach().clone() for p in task.model.parameters()])
    initial = [p.detach().clone() for p in task.model.parameters()]
    train(task, config(12, ema_decay=0.9), tmp_path, "fp")
    expected = moving_average(initial, trajectory, 0.9)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(task.model.parameters(), expected))
