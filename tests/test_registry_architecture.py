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


class BagOfItems(Retriever):
    """The mean of the history's embeddings, added to each target input: no attention at all."""

    def build_layers(self, cfg: RetrieverConfig) -> None:
        self.mix = nn.Linear(cfg.d_model, cfg.d_model)

    def _pooled(self, history: Tensor, user: Tensor) -> Tensor:
        x, valid = self._embed_history(history, user, eos=False)
        return self.mix((x * valid[..., None]).sum(1) / valid.sum(1, keepdim=True))  # (B, d)

    def forward(self, batch: Batch) -> Output:
        y = self._embed_target(batch.target[:, : self.cfg.levels])  # (B, L+1, d)
        return self.output(y + self._pooled(batch.history, batch.user)[:, None], batch.target)

    @torch.no_grad()
    def start(self, history: Tensor, user: Tensor) -> Context:
        return Context([(self._pooled(history, user),)], history[:, :, 0] >= 0)

    @torch.no_grad()
    def step_logits(self, context: Context, prefix: Tensor) -> Tensor:
        b, w, p = prefix.shape
        pooled = context.kv[0][0].repeat_interleave(w, 0)  # (B*W, d)
        h = self.norm(self._embed_target(prefix.reshape(b * w, p))[:, -1] + pooled)
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
