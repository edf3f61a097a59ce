"""The benchmark workload: MobileNetV2 1.0, 224 px, 20 classes (the shape of the 20-class ImageNet subset).

``build_checkpoint`` writes an mnv2export checkpoint of that shape whose weights come from a *built* model
(torchvision's initialisation) followed by ``steps`` SGD steps on ``synth`` at 224 px (20 classes) and a BatchNorm
re-estimation pass, so BatchNorm statistics and activation ranges are those of a model that has seen images, not
the (0, 1) defaults. Speed does not depend on the weights; calibration ranges and INT8 agreement do a little.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from mnv2export.checkpoint import Checkpoint, provenance, save_checkpoint
from mnv2export.config import DataConfig, ModelConfig
from mnv2export.data import build_datasets
from mnv2export.model import build_model

MODEL = ModelConfig(num_classes=20, width_mult=1.0)
DATA = DataConfig(source="synth", img_size=224, synth_classes=20, synth_train_per_class=16, synth_val_per_class=8)


def build_checkpoint(path: str | Path, steps: int = 20, batch: int = 16, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    bundle = build_datasets(DATA, augment=False)
    model = build_model(MODEL)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    order = torch.randperm(len(bundle.train))
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = order[(step * batch) % len(order) :][:batch]
        x = torch.stack([bundle.train[int(i)][0] for i in idx])
        y = torch.tensor([bundle.train.targets[int(i)] for i in idx])
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():  # BatchNorm statistics re-estimated on training images (cumulative average)
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for i in range(0, min(len(order), 64), batch):
            model(torch.stack([bundle.train[int(j)][0] for j in order[i : i + batch]]))
    model.eval()
    ckpt = Checkpoint(
        model_config=MODEL,
        data_config=DATA,
        class_names=bundle.class_names,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        train_summary={"note": f"built model + {steps} SGD steps on synth 224 px ({time.perf_counter() - t0:.0f} s)"},
        provenance=provenance(bundle.fingerprint),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(ckpt, path)
