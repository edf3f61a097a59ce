"""``mnv2 train``: train MobileNetV2 on an image folder or a built-in dataset, resumably, on CPU, one GPU or torchrun.

    from mnv2export.train import fit
    result = fit(run_config, run_dir="weights/run")
    result.best, result.last, result.summary, result.history

Modules: ``loop`` (fit: the epoch loop and the record of each epoch), ``run`` (a run's objects and their set-up),
``steps`` (one training or validation pass, the loader of an epoch), ``optim`` (optimizer, schedule, EMA), ``state``
(random generators, what a last.pt restores), ``run_folder`` (the run's folder, its config.json, resuming),
``signals`` (SIGTERM and Ctrl-C during a run).
"""

from __future__ import annotations

from .loop import TrainResult, fit
from .run_folder import resume_config
from .steps import StepContext, amp_dtype, evaluate, make_loader, train_one_epoch

__all__ = [
    "StepContext",
    "TrainResult",
    "amp_dtype",
    "evaluate",
    "fit",
    "make_loader",
    "resume_config",
    "train_one_epoch",
]
