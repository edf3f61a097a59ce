"""The numbers of ``check``: the reference model's logits, each artifact's on the same inputs (in batches of varying
size), the metrics between the two (:func:`compare`) and the tolerances they break (:func:`judge`)."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArtifactError, Mnv2Error
from .inputs import RealImages, generated_inputs
from .report import ParityRow, Tolerance
from .targets import metadata_problems

REFERENCE_BATCH = 64


@dataclass
class Inputs:
    """What every artifact runs (real images, then generated tensors, in batches cycling through ``sizes``) and the
    reference's logits for both."""

    real: RealImages
    generated: np.ndarray
    sizes: tuple[int, ...]
    ref_real: np.ndarray
    ref_generated: np.ndarray

    @property
    def note(self) -> str:
        return (
            f"{len(self.generated)} generated N(0, 1) tensors in the normalised input space follow the real images; "
            f"artifacts run them in batches cycling through sizes {', '.join(map(str, self.sizes))}; the reference "
            f"runs on CPU in batches of {REFERENCE_BATCH}"
        )

    def real_batch(self, data_config: dict[str, Any]) -> np.ndarray:
        """The real images preprocessed as an artifact's ``data_config`` says."""
        if not len(self.real):
            return np.zeros((0, *self.generated.shape[1:]), np.float32)
        return self.real.batch(data_config)


def reference_inputs(ckpt, real: RealImages, sizes: tuple[int, ...]) -> Inputs:
    """The inputs, with the reference logits: the checkpoint's model, FP32, eval, BatchNorm not folded, on CPU."""
    import torch

    gen = generated_inputs(ckpt.data_config.img_size, sum(sizes))
    model = ckpt.build_model().float().eval()

    def run(x: np.ndarray) -> np.ndarray:
        outs = [np.zeros((0, ckpt.model_config.num_classes), np.float32)]
        with torch.inference_mode():
            for i in range(0, len(x), REFERENCE_BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(x[i : i + REFERENCE_BATCH]))
                outs.append(model(batch).float().numpy())
        return np.concatenate(outs)

    return Inputs(real, gen, sizes, run(real.batch(ckpt.data_config.to_dict())), run(gen))


def run_batched(runner, x: np.ndarray, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``x`` in consecutive batches of sizes cycling through ``sizes`` (largest first, then in order given);
    returns (logits, the nominal batch size each sample ran in)."""
    order = sorted(sizes, reverse=True)[:1] + [b for b in sizes if b != max(sizes)]
    outs, used, i, k = [], np.zeros(len(x), np.int64), 0, 0
    while i < len(x):
        b = order[k % len(order)]
        outs.append(_run_batch(runner, x[i : i + b]))
        used[i : i + b] = b
        i, k = i + b, k + 1
    return np.concatenate(outs), used


def _run_batch(runner, x: np.ndarray) -> np.ndarray:
    try:
        out = np.asarray(runner.run(x), dtype=np.float32)
    except Mnv2Error:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime / torch raise their own types; the row says which batch
        text = str(exc).strip().splitlines()
        raise ArtifactError(
            f"fails at batch size {len(x)}: {text[0][:300] if text else type(exc).__name__}",
            hint="a static batch axis? export it again with `mnv2 export`",
        ) from None
    if out.shape[0] != len(x):
        raise ArtifactError(
            f"returns {out.shape[0]} rows for a batch of {len(x)}", hint="export it again with `mnv2 export`"
        )
    return out


def compare_row(row: ParityRow, runner, ckpt, inputs: Inputs, tol: Tolerance) -> None:
    """Run ``runner`` on the inputs and set ``row``'s metrics, failures and status."""
    meta_problems = row.failures + metadata_problems(runner.metadata, ckpt)  # after what loading found (provenance)
    gen, x_real = inputs.generated, inputs.real_batch(runner.metadata["data_config"])
    if tuple(runner.input_shape) != tuple(gen.shape[1:]):
        row.status = "fail"
        row.failures = meta_problems or [f"input size {runner.input_shape} differs from the checkpoint's"]
        return
    out, used = run_batched(runner, np.concatenate([x_real, gen]), inputs.sizes)
    ref = np.concatenate([inputs.ref_real, inputs.ref_generated])
    if out.shape != ref.shape:
        row.status = "fail"
        row.failures = [*meta_problems, f"logits have shape {out.shape[1:]}, the reference {ref.shape[1:]}"]
        return
    row.metrics = compare(ref, out, n_real=len(x_real), labels=inputs.real.labels, used=used, tol=tol)
    row.failures = meta_problems + judge(row.metrics, tol, row.precision)
    row.status = "fail" if row.failures else "pass"


def compare(
    ref: np.ndarray, out: np.ndarray, *, n_real: int, labels: np.ndarray | None, used: np.ndarray, tol: Tolerance
) -> dict[str, Any]:
    """Metrics of ``out`` against ``ref`` (N x classes); the first ``n_real`` rows are real images (``labels`` theirs)."""
    r, a = ref.astype(np.float64), out.astype(np.float64)
    d = np.abs(a - r)
    finite = np.isfinite(a)
    m: dict[str, Any] = {
        "n_real": int(n_real),
        "n_generated": int(len(ref) - n_real),
        "n_logits": int(d.size),
        "nonfinite": int((~finite).sum()),
    }
    m["max_abs"] = float(np.nanmax(np.where(finite, d, np.inf)))
    m["mean_abs"] = float(np.mean(np.where(finite, d, np.inf)))
    m["max_rel"] = float(np.max(np.where(finite, d / np.maximum(np.abs(r), 1e-6), np.inf)))
    cos = (a * r).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1), 1e-30)
    m["cosine"] = float(np.nanmin(np.where(np.isfinite(cos), cos, -1.0)))
    m["max_abs_by_batch"] = {
        str(b): float(np.max(np.where(finite, d, np.inf)[used == b])) for b in sorted(set(used.tolist()))
    }
    if tol.elementwise:
        m.update(_elementwise(r, a, d, finite, n_real, used, tol))
    m.update(_agreement(r, a, n_real, labels))
    return m


def _elementwise(r, a, d, finite, n_real: int, used: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """Logits past both bounds (Polygraphy style), how much of the bound the worst one uses, and which it is; ``d`` is
    ``|a - r|``, ``finite`` where ``a`` is."""
    atol = tol.atol * (np.maximum(1.0, np.abs(r).max(1, keepdims=True)) if tol.atol_scaled else np.ones((len(r), 1)))
    bad = ~finite | ((d > atol) & (d > tol.rtol * np.abs(r)))
    m: dict[str, Any] = {"elementwise_failures": int(bad.sum())}
    # how much of the bound the worst logit uses: min(abs/atol, abs/(rtol*|ref|)); a logit fails above 1
    m["tol_ratio"] = float(
        np.max(np.where(finite, np.minimum(_ratio(d, atol), _ratio(d, tol.rtol * np.abs(r))), np.inf))
    )
    if (
        bad.any()
    ):  # the worst: a NaN / inf first, else the largest multiple of atol (of the difference itself at atol 0)
        excess = np.where(~finite, np.inf, np.where(bad, d / atol if tol.atol else d, 0.0))
        i, c = np.unravel_index(int(np.argmax(excess)), d.shape)
        m["worst"] = {
            "sample": int(i),
            "generated": bool(i >= n_real),
            "class": int(c),
            "abs": float(d[i, c]),
            "atol": float(atol[i, 0]),
            "reference": float(r[i, c]),
            "artifact": float(a[i, c]),
            "batch_size": int(used[i]),
        }
    return m


def _agreement(r: np.ndarray, a: np.ndarray, n_real: int, labels: np.ndarray | None) -> dict[str, Any]:
    """Top-1 / top-5 agreement and accuracies: on the real images when there are any (INT8 is calibrated for them),
    else on the generated tensors."""
    sel = slice(0, n_real) if n_real else slice(None)
    rt, at = r[sel], a[sel]
    m: dict[str, Any] = {"agreement_on": "real" if n_real else "generated"}
    m["top1_agreement"] = float(100.0 * np.mean(rt.argmax(1) == at.argmax(1)))
    # with 5 classes or fewer, every class is in the top 5: the figure would be 100% whatever the artifact answers
    m["top5_agreement"] = None
    if r.shape[1] > 5:
        top5 = np.argsort(-at, axis=1)[:, :5]
        m["top5_agreement"] = float(100.0 * np.mean((top5 == rt.argmax(1)[:, None]).any(1)))
    if labels is not None and n_real:
        m["acc_reference"] = float(100.0 * np.mean(rt.argmax(1) == labels))
        m["acc_artifact"] = float(100.0 * np.mean(at.argmax(1) == labels))
        m["acc_drop_pts"] = m["acc_reference"] - m["acc_artifact"]
    return m


def _ratio(d: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """``d / bound``, where a zero bound makes any difference infinitely over it and none 0 (atol or rtol 0)."""
    bound = np.broadcast_to(bound, d.shape)
    return np.divide(d, bound, out=np.where(d > 0, np.inf, 0.0), where=bound > 0)


def judge(m: dict[str, Any], tol: Tolerance, precision: str) -> list[str]:
    """Each tolerance ``m`` breaks, with by how much."""
    out = []
    if m.get("nonfinite"):
        out.append(f"{m['nonfinite']} logit{' is' if m['nonfinite'] == 1 else 's are'} NaN or infinite")
    if tol.elementwise and m.get("elementwise_failures"):
        out.append(_elementwise_failure(m, tol))
    if precision == "int8" and m["n_real"] == 0:  # INT8 is judged on real images only
        out.append("INT8 is judged on real images and none were at hand (pass --data)")
        return out
    if tol.min_top1_agreement is not None and m["top1_agreement"] < tol.min_top1_agreement:
        n = m["n_real"] if m["agreement_on"] == "real" else m["n_generated"]
        differ = round(n * (100.0 - m["top1_agreement"]) / 100.0)
        out.append(
            f"top-1 agreement {m['top1_agreement']:.2f}% < {tol.min_top1_agreement:g}% (by {tol.min_top1_agreement - m['top1_agreement']:.2f} "
            f"points: {differ} of {n} {m['agreement_on']} samples pick another class)"
        )
    if tol.max_acc_drop_pts is not None and "acc_drop_pts" in m and m["acc_drop_pts"] > tol.max_acc_drop_pts:
        out.append(
            f"accuracy drop {m['acc_drop_pts']:.2f} points > {tol.max_acc_drop_pts:g} (by {m['acc_drop_pts'] - tol.max_acc_drop_pts:.2f}; "
            f"{m['acc_reference']:.2f}% -> {m['acc_artifact']:.2f}%)"
        )
    return out


def _elementwise_failure(m: dict[str, Any], tol: Tolerance) -> str:
    """How many logits break both bounds, the worst of them, and the largest difference at each batch size."""
    w = m["worst"]
    by_batch = ", ".join(f"batch {b}: {v:.2g}" for b, v in m["max_abs_by_batch"].items())
    scaled = " x max(1, largest |logit|)" if tol.atol_scaled else ""
    if not math.isfinite(w["artifact"]):
        worst = f"the worst logit is {w['artifact']} (NaN/inf), the reference {w['reference']:.3g}"
    else:
        times = f" = {w['abs'] / w['atol']:.3g}x atol" if w["atol"] > 0 else ""
        rel = f"{w['abs'] / abs(w['reference']):.3g}" if w["reference"] else "inf"
        worst = f"worst abs diff {w['abs']:.3g}{times}, relative {rel}"
    return (
        f"{m['elementwise_failures']} of {m['n_logits']} logits exceed both atol {tol.atol:g}{scaled} "
        f"and rtol {tol.rtol:g} ({worst}, on {'generated' if w['generated'] else 'real'} sample {w['sample']}, "
        f"class {w['class']}; max abs by {by_batch})"
    )


@contextlib.contextmanager
def tf32_disabled():
    """FP32 as IEEE float32 on CUDA for the duration: torch's new fp32_precision flags (not the legacy allow_tf32,
    which torch 2.14 refuses to mix with them; the exported TorchScript file reads them, see
    ``export.torchscript._convolutions_follow_torch_flags``) and NVIDIA_TF32_OVERRIDE=0. cuBLAS and cuDNN read that
    variable only once per process, so ``runtime.ort_providers`` also gives each ONNX Runtime CUDA session created
    meanwhile the provider option ``use_tf32=0``."""
    import torch

    flags = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn]
    saved = [f.fp32_precision for f in flags]
    env = os.environ.get("NVIDIA_TF32_OVERRIDE")
    os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
    for f in flags:
        f.fp32_precision = "ieee"
    try:
        yield
    finally:
        for f, v in zip(flags, saved):
            f.fp32_precision = v
        if env is None:
            os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
        else:
            os.environ["NVIDIA_TF32_OVERRIDE"] = env
