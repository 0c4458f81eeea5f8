"""Distributed losses: 2 gloo processes with half the batch each equal 1 process on the whole batch.

Each process runs a tiny linear "model" wrapped in DDP that maps its half of the inputs to image
and LiDAR embeddings. After backward, DDP's averaged parameter gradients, the loss parameters'
gradients and the loss value must equal those of one process on the concatenated batch; the
gradient w.r.t. a process's own embeddings is world_size times the single-process one (the scaling
that DDP's averaging undoes).
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from liploc.config import LossConfig
from liploc.training import distributed
from liploc.training.losses import build_loss

WORLD = 2
BATCH = 8  # global; 4 per process
IN_DIM, EMBED = 6, 5

CASES: dict[str, LossConfig] = {
    "clip": LossConfig(kind="clip", temperature=0.3),
    "clip_learnable": LossConfig(kind="clip", temperature=0.2, learnable_temperature=True),
    "soft": LossConfig(kind="soft", temperature=0.5, learnable_temperature=True),
    "siglip": LossConfig(kind="siglip"),
    "clip_pose": LossConfig(kind="clip", temperature=0.3, pose_aware=True, positive_radius_m=2.0),
    "siglip_pose": LossConfig(kind="siglip", pose_aware=True, positive_radius_m=2.0),
}


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Global inputs and positions; rows 1 (process 0) and 6 (process 1) lie 1 m apart."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, IN_DIM, generator=g)
    positions = torch.arange(BATCH, dtype=torch.float32)[:, None] * torch.tensor([[10.0, 0.0]])
    positions[6] = positions[1] + torch.tensor([1.0, 0.0])
    return x, positions


def make_model() -> torch.nn.Linear:
    torch.manual_seed(2)
    return torch.nn.Linear(IN_DIM, 2 * EMBED)


def embed(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    image = F.normalize(out[:, :EMBED], dim=-1)
    lidar = F.normalize(out[:, EMBED:], dim=-1)
    image.retain_grad()
    lidar.retain_grad()
    return image, lidar


def run_case(cfg: LossConfig, model: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor) -> dict:
    """Loss value and gradients of one step."""
    torch.manual_seed(3)
    loss_fn = build_loss(cfg)
    image, lidar = embed(model, x)
    loss = loss_fn(image, lidar, positions if cfg.pose_aware else None)
    loss.backward()
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    out = {
        "loss": loss.detach().reshape(1),
        "image_grad": image.grad,
        "lidar_grad": lidar.grad,
        "weight_grad": inner.weight.grad.clone(),
        "bias_grad": inner.bias.grad.clone(),
    }
    for name, p in loss_fn.named_parameters():
        out[f"loss_{name}_grad"] = p.grad.reshape(1).clone()
    inner.zero_grad()
    return out


def compute_on_rank(rank: int, out_dir: str) -> None:
    """This process's half of every case, saved to ``out_dir``; and checks of the helpers."""
    x, positions = inputs()
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    model = DistributedDataParallel(make_model())
    for case, cfg in CASES.items():
        result = run_case(cfg, model, x[rows], positions[rows])
        save_file({k: v.contiguous() for k, v in result.items()}, f"{out_dir}/{case}_{rank}.safetensors")
    local_cfg = LossConfig(kind="clip", temperature=0.2, learnable_temperature=True, gather_distributed=False)
    result = run_case(local_cfg, model, x[rows], positions[rows])
    save_file({k: v.contiguous() for k, v in result.items()}, f"{out_dir}/no_gather_{rank}.safetensors")
    assert distributed.get_world_size() == WORLD and distributed.get_rank() == rank
    mean = distributed.all_reduce_mean(torch.tensor([float(rank)]))
    assert mean.item() == pytest.approx(0.5)
    try:
        distributed.check_same_rows(torch.zeros(3 + rank, 2))
    except ValueError as err:
        assert "drop_last" in str(err)
    else:
        raise AssertionError("unequal batches were not refused")


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        compute_on_rank(rank, out_dir)
        # The DDP model is gone before the group: a reducer outliving its group can abort at exit.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(out / "pg_init"), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process_on_the_whole_batch(case: str, distributed_results: Path) -> None:
    x, positions = inputs()
    single = run_case(CASES[case], make_model(), x, positions)
    per_rank = [load_file(str(distributed_results / f"{case}_{r}.safetensors")) for r in range(WORLD)]
    for rank, result in enumerate(per_rank):
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        torch.testing.assert_close(result["loss"], single["loss"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(result["weight_grad"], single["weight_grad"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(result["bias_grad"], single["bias_grad"], atol=1e-6, rtol=1e-5)
        for name in (k for k in single if k.startswith("loss_")):
            torch.testing.assert_close(result[name], single[name], atol=1e-6, rtol=1e-5)
        for key in ("image_grad", "lidar_grad"):
            torch.testing.assert_close(result[key], WORLD * single[key][rows], atol=1e-6, rtol=1e-5)


def test_without_gathering_each_process_uses_its_own_batch(distributed_results: Path) -> None:
    # gather_distributed: false -> each process's loss of its half; DDP averages the gradients, and
    # the learnable temperature gets the same averaged gradient on every process.
    cfg = LossConfig(kind="clip", temperature=0.2, learnable_temperature=True, gather_distributed=False)
    x, positions = inputs()
    halves = [slice(r * BATCH // WORLD, (r + 1) * BATCH // WORLD) for r in range(WORLD)]
    singles = [run_case(cfg, make_model(), x[rows], positions[rows]) for rows in halves]
    for rank in range(WORLD):
        result = load_file(str(distributed_results / f"no_gather_{rank}.safetensors"))
        torch.testing.assert_close(result["loss"], singles[rank]["loss"], atol=1e-6, rtol=1e-6)
        for key in ("weight_grad", "bias_grad", "loss_log_scale_grad"):
            mean = sum(single[key] for single in singles) / WORLD
            torch.testing.assert_close(result[key], mean, atol=1e-6, rtol=1e-5)
