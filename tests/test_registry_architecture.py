"""A new retriever architecture is one module and one registry line: a toy one, registered here,
trains and evaluates through the stage runner like the built-in ones."""

import json

import pytest
import torch
from torch import Tensor, nn

from conftest import workspace_at
from semrec.registry import ARCHITECTURES, register_architecture
from semrec.retriever.model import Batch, Context, Output, Retriever, RetrieverConfig
from test_evaluate import TINY, use_synthetic_tokenizer

pytestmark = pytest.mark.slow  # trains a retriever


class BagOfItems(Retriever):
    """Each target reads the mean embedding of the items before it, added to its own inputs: no attention."""

    def build_layers(self, cfg: RetrieverConfig) -> None:
        self.mix = nn.Linear(cfg.d_model, cfg.d_model)

    def _item_means(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """(B, n, L+1) -> the mean token embedding of each item (B, n, d), and which items are real (B, n)."""
        real = items[..., 0] >= 0
        return self.tokens(self._item_tokens(items)).mean(2) * real[..., None], real

    def forward(self, batch: Batch) -> Output:
        items = batch.items
        b, n, size = items.shape
        means, real = self._item_means(items)
        sums, counts = means.cumsum(1), real.cumsum(1).clamp(min=1)[..., None]
        before = torch.cat([torch.zeros_like(sums[:, :1]), (sums / counts)[:, :-1]], 1)  # (B, n, d)
        y = self._embed_target(items[..., :-1].reshape(b * n, size - 1), self.item_positions(items).reshape(-1), bos=True)
        y = y.view(b, n, size, -1) + self.mix(before)[:, :, None]
        return self.output(y[batch.targets], items[batch.targets])

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> Context:
        means, real = self._item_means(history)
        context = means.sum(1) / real.sum(1, keepdim=True)
        return Context([(self.mix(context),)], real, position=real.sum(1))

    @torch.no_grad()
    def step_logits(self, context: Context, prefix: Tensor) -> Tensor:
        b, w, p = prefix.shape
        y = self._embed_target(prefix.reshape(b * w, p), context.position.repeat_interleave(w), bos=True)
        h = self.norm(y[:, -1] + context.kv[0][0].repeat_interleave(w, 0))
        return self._position_logits(h, p).float().view(b, w, -1)


@pytest.fixture
def toy_architecture(monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "bag-of-items", None)  # so that the registry is restored after the test
    register_architecture("bag-of-items", f"{__name__}:BagOfItems")
    use_synthetic_tokenizer(monkeypatch)


def test_a_registered_architecture_trains_and_evaluates_through_the_stages(toy_architecture, tmp_path):
    ws = workspace_at(tmp_path / "ws", "demo", **{**TINY, "retriever.arch": "bag-of-items", "retriever.train.steps": 60})
    result = ws.ensure("eval")
    config = json.loads(ws.path("retriever/config.json").read_text())
    assert config["model"]["arch"] == "bag-of-items" and result["model"]["arch"] == "bag-of-items"
    assert result["users"] == 400 and set(result["metrics"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
    assert result["metrics"]["recall@10"] > result["baselines"]["popularity"]["recall@10"]
    assert ws.state("fit-retriever").state == "done"
