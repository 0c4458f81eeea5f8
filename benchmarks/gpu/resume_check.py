"""CUDA checks of ``liploc train`` that no CPU test can make (run by ``benchmarks/gpu/checks.sh``).

Under ``torchrun --nproc_per_node=1`` (NCCL, DDP wrapping, SyncBatchNorm), on a small synthetic
drive, with the tiny config on the GPU (channels-last, fused AdamW, bf16 autocast, deterministic):

1. exact resume: a run stopped at step 5 (as by Ctrl-C) and resumed ends at step 10
   bit-identical to a run straight to step 10 (model, temperature and AdamW moments);
2. ``train.compile=true`` trains and its checkpoint loads strictly into an uncompiled model;
3. ``train.deterministic=false`` (cuDNN benchmark) trains.

Prints one line per check and, last, a JSON object. Exits 1 when a check fails.

    torchrun --nproc_per_node=1 benchmarks/gpu/resume_check.py DATA_ROOT OUT
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from liploc.config import Config, load_config
from liploc.models import create_model
from liploc.runtime.checkpoint import load_checkpoint
from liploc.runtime.data_roots import resolve_data_roots
from liploc.training import distributed
from liploc.training.train import train

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
COMMON = [
    "train.device=cuda",
    "train.epochs=4",
    "train.max_steps=10",
    "train.checkpoint_every_steps=5",
    "train.log_every=1",
    "train.sync_batchnorm=true",
    "data.num_workers=2",
]


def config(data: Path, *overrides: str) -> Config:
    return resolve_data_roots(load_config(TINY, [*COMMON, *overrides]), [data])


def main(data: Path, out: Path) -> int:
    distributed.init_from_env()
    results: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    ok = True
    try:
        start = time.perf_counter()
        straight = train(config(data), out / "straight", progress=False)

        def ctrl_c_at_5(step: int, row: dict[str, float]) -> None:
            if step == 5:
                os.kill(os.getpid(), signal.SIGINT)  # stop after this step and save, as Ctrl-C

        first = train(config(data), out / "resumed", progress=False, on_step=ctrl_c_at_5)
        assert first.stopped == "interrupted" and first.step == 5, (first.stopped, first.step)
        resumed = train(config(data), out / "resumed", resume=True, progress=False)
        a, _ = load_checkpoint(straight.last_checkpoint)
        b, _ = load_checkpoint(resumed.last_checkpoint)
        different = sorted(k for k in a if not torch.equal(a[k], b[k]))
        exact = a.keys() == b.keys() and not different and straight.step == resumed.step
        results["exact_resume"] = {
            "ok": exact,
            "different": different[:5],
            "seconds": time.perf_counter() - start,
        }
        verdict = "ok" if exact else f"FAILED {different[:5]}"
        print(f"exact resume on CUDA (DDP, SyncBatchNorm, bf16): {verdict}")
        ok &= exact

        start = time.perf_counter()
        compiled = train(config(data, "train.compile=true"), out / "compiled", progress=False)
        state, _ = load_checkpoint(compiled.last_checkpoint)
        model = create_model(load_config(TINY).model)
        model_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        missing, unexpected = model.load_state_dict(model_state, strict=False)
        loads = compiled.step == straight.step and not missing and not unexpected
        results["compile"] = {"ok": loads, "seconds": time.perf_counter() - start}
        print(f"train.compile=true: {compiled.step} steps, checkpoint loads strictly: {loads}")
        ok &= loads

        start = time.perf_counter()
        fast = train(config(data, "train.deterministic=false"), out / "benchmark", progress=False)
        results["deterministic_false"] = {
            "ok": fast.step == straight.step,
            "seconds": time.perf_counter() - start,
        }
        print(f"train.deterministic=false (cuDNN benchmark): {fast.step} steps")
        ok &= fast.step == straight.step
    finally:
        distributed.destroy()
    results["ok"] = ok
    print(json.dumps(results, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
