"""Which device each rank uses: the choices made for a GPU box, checked on the CPU with CUDA's
availability and the process group stubbed (the two-rank CPU run is in test_extract_resume.py)."""

from __future__ import annotations

import pytest
import torch

from embedstore.errors import EmbedstoreError
from embedstore.extract import distributed
from embedstore.extract.distributed import Ranks, ranks_from_env
from embedstore.extract.plan import plan_from_args
from embedstore.extract.runner import cores_per_rank, resolve_runtime


def _plan(**settings):
    return plan_from_args(["openclip:embedstore-tiny@random:0"], ["d=synthetic:shapes?n=4"], **settings)


@pytest.fixture
def cuda_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize(
    ("device", "ranks", "expected"),
    [
        ("auto", Ranks(), "cuda:0"),
        ("auto", Ranks(1, 2, 1), "cuda:1"),
        ("cuda", Ranks(), "cuda:0"),  # always an index: the decoding thread sets its device by it
        ("cuda", Ranks(3, 4, 1), "cuda:1"),  # plain "cuda" under torchrun: the rank's own GPU
        ("cuda:0", Ranks(3, 4, 1), "cuda:0"),  # an explicit index is kept
    ],
)
def test_each_rank_runs_on_its_own_gpu(cuda_present, device, ranks, expected):
    runtime = resolve_runtime(_plan(device=device), ranks, log=lambda _msg: None)
    assert str(runtime.device) == expected
    assert (runtime.precision, runtime.decode) == ("bf16", "gpu")


def test_the_cpu_fallback_is_said_out_loud(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    said: list[str] = []
    runtime = resolve_runtime(_plan(), Ranks(), log=said.append)
    assert (str(runtime.device), runtime.precision, runtime.decode) == ("cpu", "fp32", "cpu")
    assert said and "no CUDA device" in said[0]
    with pytest.raises(EmbedstoreError, match="--device cuda was asked for but CUDA is not available"):
        resolve_runtime(_plan(device="cuda"), Ranks(), log=said.append)


def test_a_gpu_rank_joins_nccl_on_its_own_device(cuda_present, monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks_from_env(use_cuda=True) == Ranks(3, 4, 1)
    cuda1 = torch.device("cuda", 1)
    assert calls == [("set_device", cuda1), ("init", {"backend": "nccl", "device_id": cuda1})]


def test_a_cpu_rank_joins_gloo(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert ranks_from_env(use_cuda=False) == Ranks(0, 2, 0)
    assert calls == [{"backend": "gloo"}]


def test_the_batched_decode_path_on_the_cpu_is_said_out_loud():
    said: list[str] = []
    runtime = resolve_runtime(_plan(device="cpu", decode="gpu"), Ranks(), log=said.append)
    assert (str(runtime.device), runtime.decode) == ("cpu", "gpu")
    assert len(said) == 1 and said[0].startswith("--decode gpu on cpu: the batched decode path")
    said.clear()
    resolve_runtime(_plan(device="cpu"), Ranks(), log=said.append)
    assert said == []


def test_auto_workers_follow_the_decode_path_and_the_cores(cuda_present, monkeypatch):
    def cores(n):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(n)), raising=False)

    cores(16)
    assert resolve_runtime(_plan(), Ranks(), log=lambda _msg: None).workers == 8  # gpu decode: half the cores
    assert resolve_runtime(_plan(decode="cpu"), Ranks(), log=lambda _msg: None).workers == 4
    assert resolve_runtime(_plan(workers=3), Ranks(), log=lambda _msg: None).workers == 3
    cores(2)
    assert resolve_runtime(_plan(), Ranks(), log=lambda _msg: None).workers == 2
    cores(128)
    runtime = resolve_runtime(_plan(), Ranks(), log=lambda _msg: None)
    assert runtime.workers == 8 and runtime.pass_threads == 1  # on a GPU the pass launches work on one thread
    cores(16)  # torchrun's 8 ranks on this node share its 16 cores: 2 each, so 2 workers each (not 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert cores_per_rank(Ranks(3, 8, 3)) == 2 and cores_per_rank(Ranks()) == 16
    assert resolve_runtime(_plan(), Ranks(3, 8, 3), log=lambda _msg: None).workers == 2


def test_a_cpu_decode_share_without_gpu_decoding_is_said_to_do_nothing():
    said: list[str] = []
    resolve_runtime(_plan(device="cpu", cpu_decode_share=0.3), Ranks(), log=said.append)
    assert said == ["--cpu-decode-share 0.3 does nothing with --decode cpu: every image is PIL-decoded in the "
                    "workers already"]  # fmt: skip


def test_workers_take_a_number_or_auto_on_the_command_line():
    import click

    from embedstore_cli.extract_command import WORKERS

    assert WORKERS.convert("auto", None, None) == "auto" and WORKERS.convert("3", None, None) == 3
    with pytest.raises(click.BadParameter, match="'many' is neither a number nor auto"):
        WORKERS.convert("many", None, None)
