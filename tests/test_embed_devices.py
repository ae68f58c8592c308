"""`embed.devices`: which devices `semrec embed` encodes on at once, and a pool of processes that
gives the same vectors as one process."""

import itertools
from contextlib import contextmanager

import pytest
import torch
from sentence_transformers import SentenceTransformer

from semrec import embed
from semrec.errors import SemrecError
from semrec.report import ProgressBar, Reporter
from semrec.settings import EmbedSettings
from semrec.workspace import StageRun
from test_embed import PRODUCTS, fake_encode, write_items

COLOURS = ("red", "nude", "black", "brown", "pink")
THINGS = ("lipstick", "lip gloss", "mascara", "eyeliner", "face serum", "nail polish", "body butter", "shampoo")
TEXTS = [  # 40 texts of three lengths, so that sorting by length reorders them
    f"{colour} {thing}" + ", with a long note on its shade and finish" * (i % 3)
    for i, (colour, thing) in enumerate(itertools.product(COLOURS, THINGS))
]


class AdvanceCounter(Reporter):
    """Records each step of the progress bars."""

    def __init__(self):
        self.advances: list[int] = []

    @contextmanager
    def progress(self, description: str, total: int | None = None):
        bar = ProgressBar()
        bar.advance = self.advances.append
        yield bar


@pytest.mark.parametrize(
    "settings, cuda_count, devices",
    [
        (EmbedSettings(device="auto"), 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
        (EmbedSettings(device="cuda"), 2, ["cuda:0", "cuda:1"]),
        (EmbedSettings(device="auto"), 1, ["auto"]),
        (EmbedSettings(device="auto"), 0, ["auto"]),
        (EmbedSettings(device="cuda:1"), 2, ["cuda:1"]),
        (EmbedSettings(device="cpu"), 2, ["cpu"]),
        (EmbedSettings(device="auto", devices=["cuda:2", "cuda:3"]), 4, ["cuda:2", "cuda:3"]),
        (EmbedSettings(device="cpu", devices=["cpu", "cpu"]), 0, ["cpu", "cpu"]),
    ],
)
def test_encode_devices_picks_every_gpu_for_auto_the_one_device_otherwise_and_an_explicit_list(
    settings, cuda_count, devices
):
    assert embed.encode_devices(settings, cuda_count) == devices


def test_under_torchrun_each_rank_keeps_to_its_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert len(embed.resolve_devices(EmbedSettings(device="auto"))) == 1


@pytest.mark.parametrize("devices", [["cpu", "gpu1"], ["cpu", 0]])
def test_a_bad_name_in_embed_devices_is_a_user_error_naming_the_setting(devices):
    with pytest.raises(SemrecError) as error:
        embed.encode_texts(EmbedSettings(devices=devices), ["red lipstick"])
    assert "embed.devices" in error.value.message and error.value.exit_code == 2


@pytest.mark.slow
def test_two_processes_give_the_vectors_of_one_in_the_same_order(monkeypatch):
    one = EmbedSettings(device="cpu", batch_size=2)
    two = EmbedSettings(device="cpu", devices=["cpu", "cpu"], batch_size=2)
    assert len(TEXTS) > two.batch_size * embed.POOL_BATCHES_PER_PROCESS * len(two.devices)  # enough for a pool
    pools = []
    start = SentenceTransformer.start_multi_process_pool

    def counted_start(model, target_devices=None):
        pools.append(target_devices)
        return start(model, target_devices=target_devices)

    monkeypatch.setattr(SentenceTransformer, "start_multi_process_pool", counted_start)
    reporter = AdvanceCounter()
    pooled = embed.encode_texts(two, TEXTS, reporter)
    assert pools == [["cpu", "cpu"]]
    assert sum(reporter.advances) == len(TEXTS) and len(reporter.advances) > 1  # the bar moves per call
    alone = embed.encode_texts(one, TEXTS)
    assert pooled.shape == alone.shape == (len(TEXTS), 384) and pooled.dtype == torch.float32
    assert torch.allclose(pooled, alone, atol=1e-5)
    assert torch.allclose(pooled.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)


def test_the_embed_figures_name_the_devices_when_there_are_several(make_workspace, monkeypatch):
    monkeypatch.setattr(embed, "encode_texts", fake_encode([]))
    monkeypatch.setattr(embed, "load_model", lambda settings: None)
    ws = make_workspace("demo", **{"embed.device": "cpu"})
    write_items(ws, PRODUCTS)
    figures = embed.run_embed(ws, StageRun("embed", "test"))
    assert figures["device"] == "cpu" and "devices" not in figures
    ws.settings.embed.devices = ["cpu", "cpu"]
    figures = embed.run_embed(ws, StageRun("embed", "test"))
    assert figures["device"] == "cpu" and figures["devices"] == ["cpu", "cpu"]
