"""Cost of a training checkpoint save on the loop's critical path: today's saver against the old one.

The loop stops while it saves ``last`` (model, loss, AdamW moments) and, at a new best, ``best``.
Old path (written here as it was): ``safetensors.save_file`` to a temporary file, then the file
read back and hashed for the JSON, plus ``model.fingerprint()`` copying and hashing the weights
again, for each of best and last. New path (``liploc.training.checkpointing.save_training_checkpoint``):
the tensors copied once per step, serialised in memory, hashed there and written once; the
fingerprint computed once from those copies; best and last share them.

Reported: median seconds of one best+last save pair for each path (rounds interleaved; other
processes may load the CPU), the ratio, and as the last line one JSON object.

    python benchmarks/checkpoint_save.py [--encoder resnet18] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from liploc.config import Config
from liploc.models import create_model
from liploc.runtime.checkpoint import state_to_tensors
from liploc.training.checkpointing import Snapshot, save_training_checkpoint
from liploc.training.losses import build_loss


def old_save(
    path: Path, model: torch.nn.Module, loss: torch.nn.Module, opt: torch.optim.Optimizer | None
) -> None:
    state = {"model": model.state_dict(), "loss": loss.state_dict()}
    if opt is not None:
        state["optimizer"] = opt.state_dict()
    tensors, skeleton = state_to_tensors(state)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    fingerprint = model.fingerprint()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    record = {"sha256": digest.hexdigest(), "fingerprint": fingerprint, "state": skeleton}
    path.with_suffix(".json").write_text(json.dumps(record, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config = Config()
    config.model.image_encoder = config.model.lidar_encoder = args.encoder
    config.model.pretrained = False
    model = create_model(config.model)
    loss = build_loss(config.loss)
    opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()])
    model(torch.randn(2, 3, 64, 64), torch.randn(2, config.model.lidar_in_chans, 64, 64))[0].sum().backward()
    opt.step()  # AdamW moments exist, as in a real checkpoint
    params = sum(p.numel() for p in model.parameters())
    old_times, new_times = [], []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for step in range(args.rounds):
            start = time.perf_counter()
            old_save(root / "old_best.safetensors", model, loss, None)
            old_save(root / "old_last.safetensors", model, loss, opt)
            old_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            snapshot = Snapshot(step)
            position = {"step": step}
            save_training_checkpoint(
                root / "best.safetensors", config, model, loss, position, {}, snapshot=snapshot
            )
            save_training_checkpoint(
                root / "last.safetensors", config, model, loss, position, {}, opt, snapshot=snapshot
            )
            new_times.append(time.perf_counter() - start)
    old_s, new_s = statistics.median(old_times), statistics.median(new_times)
    print(f"{args.encoder} towers, {params / 1e6:.1f} M parameters + AdamW moments; best + last per save")
    print(f"old saver: {old_s:.3f} s   new saver: {new_s:.3f} s   new/old {new_s / old_s:.2f}")
    print(
        json.dumps(
            {"encoder": args.encoder, "old_s": old_s, "new_s": new_s, "ratio_new_over_old": new_s / old_s}
        )
    )


if __name__ == "__main__":
    main()
