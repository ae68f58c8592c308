"""Data-parallel training and sharded evaluation with 2 gloo processes on the CPU.

Each multi-rank test starts 2 processes (torch.multiprocessing, spawn) that join a gloo process group
as torchrun would make them, run a job of this module and leave what they return in a JSON file.
Equality across world sizes needs every random number to be the same in 1 and 2 processes: the
retriever trains with dropout 0 (each rank draws its own dropout masks, seeded by step and rank),
and the tokenizer without dead-code revival (each rank re-seeds dead codes from its own share of
the batch, and rank 0's codebooks win). Resume is exact under 2 ranks even with dropout, since the
masks are seeded by the step.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from semrec import distributed
from semrec.errors import SemrecError
from semrec.project import load_project, render_toml
from semrec.report import RecordingReporter
from semrec.workspace import Workspace

SASREC = {"data.demo_items": 200, "data.demo_users": 240, "baselines.sasrec.max_seq_len": 10,
          "baselines.sasrec.d_model": 32, "baselines.sasrec.dropout": 0.2, "baselines.sasrec.train.steps": 24,
          "baselines.sasrec.eval_every": 12, "baselines.sasrec.train.checkpoint_every": 8,
          "baselines.sasrec.train.batch_size": 32, "baselines.sasrec.valid_users": 0, "baselines.sasrec.device": "cpu"}
TOKENIZER = {"tokenizer.levels": 2, "tokenizer.codebook_size": 8, "tokenizer.rqvae.hidden_dims": [32],
             "tokenizer.rqvae.latent_dim": 8, "tokenizer.train.steps": 30, "tokenizer.train.batch_size": 64,
             "tokenizer.train.warmup_steps": 5, "tokenizer.kmeans_iters": 5, "tokenizer.device": "cpu",
             "tokenizer.rqvae.revive_dead_codes": False}
RETRIEVER = {"data.demo_items": 200, "data.demo_users": 160, "retriever.train.steps": 16, "retriever.eval_every": 8,
             "retriever.valid_users": 64, "retriever.train.checkpoint_every": 8, "retriever.train.batch_size": 32,
             "eval.batch_size": 24, "eval.beam_size": 10}  # several batches of users, so that both ranks rank some


# -- starting ranks ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, job: str, args: tuple, out: str, digest: str) -> None:
    """One rank: torchrun's variables, the process group, the job; its result or error as JSON."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), SEMREC_RANK_TIMEOUT="60")
    torch.set_num_threads(1)
    try:
        distributed.start(digest)
        result = {"value": globals()[job](*args)}
    except SemrecError as e:
        result = {"error": e.message, "type": type(e).__name__, "exit_code": e.exit_code}
    except BaseException as e:
        result = {"error": f"{type(e).__name__}: {e}", "type": type(e).__name__, "traceback": traceback.format_exc()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    distributed.stop()


def run_ranks(tmp_path: Path, job: str, *args, world: int = 2, digests: list[str] | None = None) -> list[dict]:
    """Run `job(*args)` in `world` gloo ranks; each rank's {"value": ...} or {"error": ...}, None if it died.

    `digests`: the settings digest of each rank (all the same by default)."""
    digests = digests or ["same settings"] * world
    out = tmp_path / f"ranks-{job}-{_free_port()}"
    out.mkdir()
    context = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_rank_main, args=(r, world, port, job, args, str(out), digests[r]))
                 for r in range(world)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=600)
        if p.is_alive():
            p.kill()
    return [json.loads(f.read_text()) if (f := out / f"rank{r}.json").exists() else None for r in range(world)]


# -- jobs (run in every rank) ------------------------------------------------------------------------
def _workspace(root: str) -> Workspace:
    return Workspace(load_project(explicit=Path(root)), RecordingReporter())


def fit_stage(root: str, stage: str, kill_rank_at: tuple[int, int] = (-1, -1)) -> dict:
    """ws.ensure(stage) with the synthetic tokenizer stages of test_evaluate; optionally one rank dies at a step."""
    from test_evaluate import use_synthetic_tokenizer

    from semrec import train

    step = train.Trainer.step

    def step_or_die(self):
        if (distributed.rank(), self.progress["step"]) == kill_rank_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self)

    with pytest.MonkeyPatch.context() as patch:
        use_synthetic_tokenizer(patch)
        patch.setattr(train.Trainer, "step", step_or_die)
        return _workspace(root).ensure(stage)


def fit_tokenizer_history(folder: str) -> list[dict]:
    """The loss curve of the rqvae tokenizer on fixed random item vectors."""
    from semrec.pipeline import lookup
    from semrec.project import preset_settings
    from semrec.tokenizer.fit import fit_tokenizer

    settings = preset_settings("demo")
    for key, value in TOKENIZER.items():
        section, name = key.rsplit(".", 1)
        setattr(lookup(settings, section), name, value)
    embeddings = torch.randn(256, 16, generator=torch.Generator().manual_seed(3))
    _, summary = fit_tokenizer(settings, embeddings, None, Path(folder), "fp", resume=False)
    return summary["history"]


def evaluate(root: str) -> dict:
    from semrec.evaluate import run_eval
    from semrec.workspace import StageRun

    return run_eval(_workspace(root), StageRun("eval", "fp"))


def nothing() -> None:
    return None


# -- workspaces ----------------------------------------------------------------------------------
def retriever_workspace(make_workspace, monkeypatch) -> Workspace:
    """A small demo workspace whose stages up to `tokenize` (synthetic) are done."""
    from test_evaluate import prepared_workspace, use_synthetic_tokenizer

    ws = prepared_workspace(make_workspace, **RETRIEVER)
    use_synthetic_tokenizer(monkeypatch)
    ws.require("tokenize")
    return ws


def copy_workspace(ws: Workspace, root: Path) -> Path:
    shutil.copytree(ws.root, root)
    return root


def losses(history: list[dict], key: str = "loss") -> list[float]:
    return [row[key] for row in history if key in row]


# -- without processes ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 32, 33])
def test_shares_of_two_ranks_cover_the_batch_once_or_all_of_a_batch_smaller_than_them(monkeypatch, n):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares.append(list(range(n))[distributed.share(n)])
    if n < 2:
        assert shares == [[0], [0]]
    else:
        assert shares[0] + shares[1] == list(range(n)) and abs(len(shares[0]) - len(shares[1])) <= 1


@pytest.mark.parametrize("batch_size, words", [(33, "does not divide among the ranks (2)"),
                                              (1, "is smaller than the number of ranks (2)")])
def test_a_global_batch_that_does_not_divide_among_the_ranks_is_refused(monkeypatch, batch_size, words):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(distributed.SameOnEveryRank) as caught:
        distributed.check_batch_size(batch_size, "retriever.train.batch_size")
    assert words in caught.value.message and caught.value.exit_code == 2
    assert "multiple of 2" in caught.value.hint


def test_one_process_needs_no_process_group():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    part = torch.tensor([[1, 2], [0, 0]])
    assert distributed.merge(part) is part and distributed.share(5) == slice(0, 5)


# -- with 2 gloo processes -------------------------------------------------------------------------
def test_a_rank_with_other_settings_is_refused(tmp_path):
    results = run_ranks(tmp_path, "nothing", digests=["semrec.toml of rank 0", "semrec.toml of rank 1"])
    assert [r["type"] for r in results] == ["SameOnEveryRank", "SameOnEveryRank"], results
    assert "rank(s) 1 read other settings than rank 0" in results[0]["error"]


@pytest.mark.slow
def test_tokenizer_loss_curve_of_two_ranks_of_half_the_batch_equals_one_rank(tmp_path):
    one = fit_tokenizer_history(str(tmp_path / "one"))
    two = run_ranks(tmp_path, "fit_tokenizer_history", str(tmp_path / "two"))
    assert all("value" in r for r in two), two
    assert two[0]["value"] == two[1]["value"]  # every rank logs the global figures
    for key in ("loss", "recon", "vq"):
        assert losses(two[0]["value"], key) == pytest.approx(losses(one, key), rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_retriever_loss_curve_of_two_ranks_equals_one_rank_and_sharded_eval_equals_unsharded(
        make_workspace, monkeypatch, tmp_path):
    ws = retriever_workspace(make_workspace, monkeypatch)
    two_root = copy_workspace(ws, tmp_path / "two")
    one = fit_stage(str(ws.root), "fit-retriever")
    two = run_ranks(tmp_path, "fit_stage", str(two_root), "fit-retriever")
    assert all("value" in r for r in two), two
    history_one = json.loads(ws.path("retriever/metrics.json").read_text())["history"]
    history_two = json.loads((two_root / "retriever/metrics.json").read_text())["history"]
    assert losses(history_two) == pytest.approx(losses(history_one), rel=1e-4)
    assert losses(history_two, "valid_loss") == pytest.approx(losses(history_one, "valid_loss"), rel=1e-4)
    assert two[0]["value"]["steps"] == one["steps"] and two[1]["value"] == {}  # rank 0 alone reports
    manifest = json.loads((two_root / "manifest.json").read_text())
    assert "fit-retriever" in manifest  # written by rank 0

    single = evaluate(str(ws.root))
    sharded = run_ranks(tmp_path, "evaluate", str(ws.root))
    for rank in sharded:
        assert rank["value"]["metrics"] == single["metrics"]  # to the last digit
        assert rank["value"]["baselines"] == single["baselines"]


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_with_a_message_and_the_rerun_resumes_exactly(make_workspace, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from semrec.train import LAST

    ws = make_workspace("demo", **SASREC)
    ws.project.path.write_text(render_toml(ws.settings))
    ws.ensure("download")
    killed = copy_workspace(ws, tmp_path / "killed")
    whole = run_ranks(tmp_path, "fit_stage", str(ws.root), "fit-baseline")
    assert all("value" in r for r in whole), whole

    stopped = run_ranks(tmp_path, "fit_stage", str(killed), "fit-baseline", (1, 13))
    assert stopped[1] is None  # killed with -9
    assert stopped[0]["type"] == "StageFailed", stopped[0]
    assert "rank 0: another rank stopped or stopped answering at step 13" in stopped[0]["error"]
    checkpoint = killed / "baselines/sasrec/checkpoints" / LAST
    with safe_open(str(checkpoint), framework="pt") as f:  # intact: the one of step 8
        assert json.loads(f.metadata()["progress"])["step"] == 8

    resumed = run_ranks(tmp_path, "fit_stage", str(killed), "fit-baseline")
    assert all("value" in r for r in resumed), resumed
    a = load_file(str(ws.path("baselines/sasrec/model.safetensors")))
    b = load_file(str(killed / "baselines/sasrec/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # dropout 0.2, yet exact
    history = [json.loads((root / "baselines/sasrec/metrics.json").read_text())["history"] for root in (ws.root, killed)]
    assert history[0] == history[1]


@pytest.mark.slow
def test_torchrun_with_a_batch_that_does_not_divide_stops_every_rank_with_one_message(make_workspace):
    ws = make_workspace("demo", **{**SASREC, "baselines.sasrec.train.batch_size": 33})
    ws.project.path.write_text(render_toml(ws.settings))
    ws.ensure("download")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "semrec", "-p", str(ws.root), "fit-baseline"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("baselines.sasrec.train.batch_size = 33 does not divide among the ranks (2)") == 1, output
    assert "exitcode  : 2" in output or "exitcode: 2" in output, output
    assert "in use by" not in output  # rank 1 did not ask for the workspace lock
