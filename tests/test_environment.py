"""The venv made by `make setup` holds a torch/torchvision/timm set that imports together."""

from __future__ import annotations


def test_timm_and_torchvision_import_together() -> None:
    import timm
    import torch
    import torchvision
    from torchvision.ops import nms

    # torchvision's compiled ops must match torch (a mismatched pair fails right here).
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    assert torchvision.__version__.startswith("0.29.1")
    assert torch.__version__.startswith("2.14.1")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 512)


def test_faiss_with_numpy2() -> None:
    import faiss
    import numpy as np

    assert int(np.__version__.split(".")[0]) >= 2
    index = faiss.IndexFlatIP(4)
    index.add(np.eye(4, dtype=np.float32))
    _, idx = index.search(np.eye(4, dtype=np.float32)[2:3], 1)
    assert idx[0, 0] == 2
