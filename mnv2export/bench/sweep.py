"""``run``: every requested (provider, format, batch, I/O mode) as one row, in that order; a row that cannot run says
why (``unavailable``) and a row that fails carries its error (``error``); neither stops the sweep.

Providers: ``cpu``, ``cuda``, ``tensorrt`` (ONNX only; optional) or ``all`` (cpu and cuda). A provider named
explicitly that cannot be had here raises :class:`ProviderUnavailable` before anything is measured (no silent
fallback, and no minutes of CPU rows before the error); under ``all`` its rows are ``unavailable`` with the reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import formats as registry
from ..errors import ConfigError, Mnv2Error, ProviderUnavailable
from ..params import check_int, check_ints, check_number, choose
from ..runtime.runners import CHECKED_PROVIDERS, NO_GPU_HINT, PROVIDERS
from .result import BenchResult, BenchRow
from .sources import FORMATS
from .stats import latency_stats
from .timing import Plan, measure

log = logging.getLogger(__name__)

AMP = "+amp"  # suffix of the torch rows timed under torch.autocast (--amp)
GRAPH = "+graph"  # suffix of the ONNX rows on the CUDA provider timed as CUDA graphs (--cuda-graph)
GRAPH_NOTE = "CUDA graph (enable_cuda_graph=1): captured in the first call, replayed"
GRAPH_ROWS = (
    "<format>+graph: the format's ONNX file on the CUDA provider with enable_cuda_graph=1, device-resident I/O "
    "through I/O binding; the first call (warm-up) captures the kernels, the timed calls replay the graph"
)
EAGER = (
    "torchvision MobileNetV2 built from the checkpoint, eval(), FP32, NCHW contiguous, BatchNorm not folded, no compile, "
    "called under torch.inference_mode() with torch.set_num_threads(threads)"
)
AMP_ROWS = (
    "<format>+amp: the same module and input as the format's row, called under torch.autocast(device, dtype) "
    "inside torch.inference_mode(): float16 on CUDA, bfloat16 on the CPU"
)
MEMORY_CHECK = (
    "before each row allocates anything: its bytes estimated from the model's layer shapes (bench.memory) against "
    "MemAvailable or the room under the cgroup limit (and free GPU memory on CUDA); a row that cannot fit is an error row"
)
TORCHSCRIPT = (
    "the exported file (traced, BatchNorm folded, frozen): torch.jit.load(map_location), then on the CPU "
    "torch.jit.optimize_for_inference (counted in load time); torch.inference_mode()"
)


@dataclass
class _Sweep:
    """What a sweep measures, checked: the rows' formats (with their +amp / +graph variants), providers, batch sizes,
    timing plan, thread count and files, and why a provider cannot run a family of formats here."""

    formats: list[str]
    providers: list[str]
    sizes: list[int]
    plan: Plan
    threads: int
    source: Any  # bench.sources.Source
    problems: dict[tuple[str, str], str | None]
    no_torch: bool


def run(
    target: str | Path,
    *,
    formats: str | Iterable[str] = ("all",),
    providers: str | Iterable[str] = ("cpu",),
    batches: Iterable[int] = (1, 8, 32),
    warmup: int = 10,
    warmup_s: float | None = None,
    iters: int | None = None,
    duration: float | None = None,
    threads: int | None = None,
    include_copies: bool = False,
    rounds: int = 1,
    seed: int = 0,
    amp: bool = False,
    cuda_graph: bool = False,
) -> BenchResult:
    """Benchmark every requested format on every requested provider and batch size.

    ``target``: an artifacts folder (manifest.json) or a checkpoint. ``warmup``: calls before timing (or
    ``warmup_s`` seconds). ``iters`` timed calls, or ``duration`` seconds (default 2 s, at least 10 calls), per row
    and round. ``threads``: intra-op threads (default: the machine's physical cores). ``include_copies``: on CUDA,
    also time each row with host arrays in and out (``copies``) beside device-resident I/O (``resident``).
    ``rounds``: measure the whole sweep that many times, every other round in reverse order, and pool each row's
    timings, so that a load change on a shared machine hits every row alike. ``amp``: beside each torch format, a
    ``<format>+amp`` row timed under ``torch.autocast`` (FP16 on CUDA, BF16 on the CPU), said in the row's note, and
    said too when the autocast did not reach the model (its logits came out FP32). ``cuda_graph``: beside each ONNX
    format on the CUDA provider, a ``<format>+graph`` row timed as a CUDA graph (ONNX Runtime's ``enable_cuda_graph``,
    device-resident I/O); a model ONNX Runtime will not capture (INT8: some nodes stay on the CPU) is ``unavailable``.
    """
    from .machine import machine_info

    check_int("rounds", rounds, 1)
    sweep = _prepare(target, formats, providers, batches, (warmup, warmup_s, iters, duration), threads, amp, cuda_graph)
    keys = _row_keys(sweep, include_copies)
    rows = {k: BenchRow(k[1], k[0], k[2], k[3]) for k in keys}
    samples = _runnable_rows(rows, sweep)
    _measure_rounds(rows, keys, samples, sweep, rounds, seed)
    result_rows = _finish_rows(rows, samples, sweep.threads)
    settings = _settings(target, sweep, (warmup, warmup_s, iters, duration), threads, rounds, seed)
    settings.update(include_copies=include_copies, amp=AMP_ROWS if amp else None)
    settings.update(cuda_graph=GRAPH_ROWS if cuda_graph else None)
    return BenchResult(rows=result_rows, machine=machine_info(sweep.threads), settings=settings)


def _prepare(target, formats, providers, batches, timing, threads, amp: bool, cuda_graph: bool) -> _Sweep:
    """The settings and the target checked, before torch is imported (their errors come at once), and an explicit
    provider this machine lacks refused before anything is measured."""
    from ..device import torch_installed
    from .machine import physical_cores
    from .sources import resolve

    fmts, sizes, plan = check_settings(formats, batches, *timing)
    named = choose(formats, FORMATS, "formats")[1]  # every format named, no `all`
    torch_named = named and any(_needs_torch(f) for f in fmts)
    provs, explicit = choose(providers, PROVIDERS, "providers", everything=CHECKED_PROVIDERS)
    fmts = _with_variants(fmts, provs, amp, cuda_graph)
    if threads is not None:
        check_int("threads", threads, 1)
    src = resolve(target)
    if not named:  # `all`: a format outside the usual set (pt2, executorch) only where the target holds its file
        fmts = [f for f in fmts if registry.get(_base(f)).benched_when_absent or _base(f) in src.files]
    no_torch = not torch_installed()
    if no_torch and torch_named:  # named explicitly: the CLI's one-line "needs torch" error, before any work
        import torch  # noqa: F401

    # without torch (a runtime-only install, --formats all) the eager and TorchScript rows say so, the others run
    problems = provider_problems(provs, {_family(f) for f in fmts} - ({"torch"} if no_torch else set()))
    if explicit:
        require_providers(problems)
    return _Sweep(fmts, provs, sizes, plan, threads or physical_cores(), src, problems, no_torch)


def _with_variants(fmts: list[str], provs: list[str], amp: bool, cuda_graph: bool) -> list[str]:
    """Each format followed by its ``+amp`` row (torch formats, ``amp``) or ``+graph`` row (ONNX, ``cuda_graph``)."""
    if amp:
        fmts = [g for f in fmts for g in ((f, f + AMP) if registry.get(f).autocast else (f,))]
    if cuda_graph:
        if "cuda" not in provs:
            raise ConfigError(
                "CUDA graphs were asked for without the cuda provider",
                hint="add {providers} cuda (or all), or drop {cuda_graph}",
            )
        if all(_family(f) == "torch" for f in fmts):
            raise ConfigError(
                "CUDA graphs are timed for the ONNX formats only",
                hint="add {formats} onnx, fp16 or int8, or drop {cuda_graph}",
            )
        fmts = [g for f in fmts for g in ((f, f + GRAPH) if _family(f) == "onnx" else (f,))]
    return fmts


def _row_keys(sweep: _Sweep, include_copies: bool) -> list[tuple[str, str, int, str]]:
    """(provider, format, batch, I/O mode) of every row, in the table's order."""
    return [
        (p, f, b, io)
        for p in sweep.providers
        for f in sweep.formats
        for b in sweep.sizes
        for io in (("resident", "copies") if include_copies and p != "cpu" else ("resident",))
        if not f.endswith(GRAPH) or (p == "cuda" and io == "resident")
    ]


def _runnable_rows(rows: dict[tuple, BenchRow], sweep: _Sweep) -> dict[tuple, _Samples]:
    """Mark the rows that cannot run (``unavailable``, with why) or whose file is broken (``error``); the others get
    their file and an empty record of samples."""
    from ..device import NO_TORCH

    src, samples = sweep.source, {}
    for key, row in rows.items():
        torch_row = _needs_torch(row.format)
        why = (NO_TORCH if sweep.no_torch and torch_row else None) or src.missing.get(_base(row.format))
        why = why or sweep.problems[(row.provider, _family(row.format))]
        if why:
            row.status, row.reason = "unavailable", why
        elif _base(row.format) in src.errors:
            row.status, row.reason = "error", src.errors[_base(row.format)]
        else:
            row.path = str(src.files[_base(row.format)])
            entry = src.entries.get(_base(row.format), {})  # the checkpoint of an eager row has none
            row.file_mb = round(src.files[_base(row.format)].stat().st_size / 1e6, 3)
            row.export_s = entry.get("seconds")
            samples[key] = _Samples()
    return samples


def _measure_rounds(rows, keys, samples, sweep: _Sweep, rounds: int, seed: int) -> None:
    """Every runnable row measured once per round, every other round in reverse order."""
    from ..device import cpu_threads, warn_if_oversubscribed

    warn_if_oversubscribed(sweep.threads)
    # torch's process-wide thread count, set only where a torch row runs (ONNX sessions take theirs as an option)
    torch_rows = any(_needs_torch(rows[k].format) for k in samples)
    with cpu_threads(sweep.threads) if torch_rows else contextlib.nullcontext():
        for rnd in range(rounds):
            for key in keys if rnd % 2 == 0 else keys[::-1]:
                row = rows[key]
                if key in samples and row.ok:  # a row that failed once is not measured again
                    _measure_row(row, Path(row.path), sweep.threads, sweep.plan, seed, samples[key])
                    log.info("%s%s", f"round {rnd + 1}/{rounds}: " if rounds > 1 else "", _log_line(row, samples[key]))


def _finish_rows(rows: dict[tuple, BenchRow], samples: dict[tuple, _Samples], threads: int) -> list[BenchRow]:
    """Statistics, node placement (ONNX off the CPU), notes and speed-ups over eager, into the rows."""
    placements: dict[tuple[str, str], dict | None] = {}
    for key, row in rows.items():
        if key in samples and row.ok:
            samples[key].finish(row)
            if _family(row.format) == "onnx" and row.provider != "cpu":
                _placement(row, Path(row.path), threads, placements)
            if row.format.endswith(GRAPH):
                row.note = "; ".join(filter(None, (GRAPH_NOTE, row.note)))
    result_rows = list(rows.values())
    _speedups(result_rows)
    return result_rows


def _settings(target, sweep: _Sweep, timing, threads: int | None, rounds: int, seed: int) -> dict[str, Any]:
    """What the result records of how it was measured (its JSON's ``settings``)."""
    warmup, warmup_s, iters, duration = timing
    src = sweep.source
    return {
        "target": str(target),
        "artifacts_folder": str(src.folder) if src.folder else None,
        "checkpoint": str(src.checkpoint) if src.checkpoint else None,
        "files": {k: str(v) for k, v in src.files.items()},
        "formats": sweep.formats,
        "providers": sweep.providers,
        "batches": sweep.sizes,
        "warmup": warmup,
        "warmup_s": warmup_s,
        "iters": iters,
        "duration": duration,
        "rounds": rounds,
        "plan": sweep.plan.describe() + (f", {rounds} rounds pooled" if rounds > 1 else ""),
        "threads": sweep.threads,
        "threads_source": "--threads" if threads else "default: the machine's physical cores",
        "include_copies": None,
        "input": f"random normal float32 N x C x H x W (seed {seed}), the artifact's input size",
        "eager": EAGER,
        "torchscript": TORCHSCRIPT,
        "amp": None,
        "cuda_graph": None,
        "timer": "time.perf_counter_ns around each call; on CUDA a device-wide synchronize inside the timer",
        "memory_check": MEMORY_CHECK,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class _Samples:
    """What the rounds of one row measured; ``finish`` writes the statistics into the row."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.session_s: list[float] = []
        self.first_s: list[float] = []
        self.peak: list[float] = []
        self.added: list[float] = []
        self.gpu: list[float] = []

    def finish(self, row: BenchRow) -> None:
        import statistics

        for key, value in latency_stats(self.times, row.batch).items():
            setattr(row, key, value)
        row.iters = len(self.times)
        row.session_s = statistics.median(self.session_s)
        row.first_s = statistics.median(self.first_s)
        row.peak_host_mb = max(self.peak)
        row.host_added_mb = max(self.added) if self.added else None
        row.gpu_mem_mb = max(self.gpu) if self.gpu else None


def _join_reasons(reasons: list[str]) -> str:
    """'CUDA was asked for but A; CUDA was asked for but B' -> 'CUDA was asked for but A, and B'."""
    prefix = "CUDA was asked for but "
    if len(reasons) > 1 and all(r.startswith(prefix) for r in reasons):
        return prefix + ", and ".join(r[len(prefix) :] for r in reasons)
    return "; ".join(reasons)


def _base(fmt: str) -> str:
    """The format whose file a row loads: ``torchscript+amp`` -> ``torchscript``, ``fp16+graph`` -> ``fp16``."""
    return fmt.removesuffix(AMP).removesuffix(GRAPH)


def _family(fmt: str) -> str:
    """The engine that runs a row: torch or onnx (ONNX Runtime)."""
    return registry.get(_base(fmt)).family


def _needs_torch(fmt: str) -> bool:
    """Whether a row's runtime needs torch: every engine but ONNX Runtime (ExecuTorch's takes torch tensors)."""
    return _family(fmt) != "onnx"


def check_settings(
    formats: str | Iterable[str],
    batches: Iterable[int],
    warmup: int,
    warmup_s: float | None,
    iters: int | None,
    duration: float | None,
) -> tuple[list[str], list[int], Plan]:
    """The sweep's formats, batch sizes and timing plan, checked (a ConfigError names the bad one): what :func:`run`
    and the pipeline check before any work."""
    fmts, _ = choose(formats, FORMATS, "formats")
    sizes = check_ints("batches", [batches] if isinstance(batches, int) else list(batches))
    return fmts, list(dict.fromkeys(sizes)), _check_plan(warmup, warmup_s, iters, duration)


MAX_SECONDS = 86400.0  # warm-up or timed seconds per row: a day; more is a typo (inf, 1e300), not a benchmark
MAX_CALLS = 10_000_000  # warm-up or timed calls per row: hours even at 1 ms a call, and 80 MB of timings


def _check_plan(warmup: int, warmup_s: float | None, iters: int | None, duration: float | None) -> Plan:
    if iters is not None and duration is not None:
        raise ConfigError(
            "{iters} and {duration} exclude each other", hint="give a number of calls or a number of seconds"
        )
    check_int("warmup", warmup, 0, MAX_CALLS, why=", or seconds as e.g. 2s")
    if warmup_s is not None:  # NaN and inf too: an endless warm-up
        check_number("warmup", warmup_s, 0.0, MAX_SECONDS)
    if iters is not None:
        check_int("iters", iters, 1, MAX_CALLS)
    if duration is not None:  # NaN, inf, 1e300 (its nanoseconds overflow)
        check_number("duration", duration, 0.0, MAX_SECONDS, lo_open=True)
    return Plan(warmup=warmup, warmup_s=warmup_s, iters=iters, duration=duration)


_PROBES: dict[tuple[str, str], str | None] = {}


def provider_problems(providers, families) -> dict[tuple[str, str], str | None]:
    """Why each provider cannot run each family of formats (``torch``, ``onnx``, ``executorch``) here; None where it
    can."""
    return {(p, fam): _provider_problem(p, fam) for p in providers for fam in families}


def require_providers(problems: dict[tuple[str, str], str | None]) -> None:
    """Stop an explicit request for what this machine lacks (:func:`provider_problems`), before anything runs: one
    :class:`ProviderUnavailable` naming every reason. TensorRT not running torch models, and a GPU not running
    ExecuTorch programs, are only rows' reasons."""
    bad = list(
        dict.fromkeys(
            why
            for (p, fam), why in problems.items()
            if why and not (p == "tensorrt" and fam == "torch" or fam == "executorch")
        )
    )
    if bad:
        raise ProviderUnavailable(_join_reasons(bad), hint=NO_GPU_HINT)


def _provider_problem(provider: str, family: str) -> str | None:
    """Why ``provider`` cannot run ``family`` (torch / onnx) here, or None. ONNX Runtime is asked by creating a
    session on a one-node model, so the reason is the runtime's own diagnosis (no driver, missing CUDA libraries,
    a CPU-only build...)."""
    if provider == "cpu":
        return None
    if family == "executorch":
        return "ExecuTorch's runtime here runs on the CPU (XNNPACK)"
    if family == "torch":
        if provider == "tensorrt":
            return "TensorRT runs ONNX models only (PyTorch and TorchScript have rows under cuda)"
        from ..device import cuda_unavailable_reason

        reason = cuda_unavailable_reason()
        return f"CUDA was asked for but {reason}" if reason else None
    key = (provider, family)
    if key not in _PROBES:
        _PROBES[key] = _probe_onnx(provider)
    return _PROBES[key]


def _probe_onnx(provider: str) -> str | None:
    import onnx
    from onnx import TensorProto, helper

    from ..runtime import create_session

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    with tempfile.TemporaryDirectory(prefix="mnv2-bench-probe-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):  # onnxruntime prints its provider fallback ("EP Error") to stdout
                create_session(path, provider)
        except ProviderUnavailable as exc:
            return exc.what
        finally:
            if said.getvalue().strip():
                log.debug("onnxruntime: %s", said.getvalue().strip())
    return None


def _measure_row(row: BenchRow, path: Path, threads: int, plan: Plan, seed: int, out: _Samples) -> None:
    """Load, bind, time: one round of one row, appended to ``out``; a failure turns the row into its error."""
    from .machine import HostPeak
    from .targets import GpuPeak, amp_note, bind, input_batch, load

    runner = bound = None
    try:
        host = HostPeak()
        host.start()
        _check_memory(row, path, threads)  # after the collection above, before the row allocates anything
        gpu = GpuPeak("torch" if _family(row.format) == "torch" else "onnx") if row.provider != "cpu" else None
        t0 = time.perf_counter()
        runner = load(path, row.provider, threads, cuda_graph=row.format.endswith(GRAPH))
        session_s = time.perf_counter() - t0
        bound = bind(runner, input_batch(runner, row.batch, seed), row.io, amp=row.format.endswith(AMP))
        with bound.context():
            first_s, times = measure(bound.call, bound.sync, plan)
            if bound.amp is not None:
                row.note = amp_note(bound.amp, bound.call())
        peak, added = host.peak_mb(), host.added_mb()
        gpu_mb = gpu.mb() if gpu is not None else None
        out.times += times
        out.session_s.append(session_s)
        out.first_s.append(first_s)
        out.peak.append(peak)
        if added is not None:
            out.added.append(added)
        if gpu_mb is not None:
            out.gpu.append(gpu_mb)
        elif gpu is not None:
            row.note = "; ".join(filter(None, (row.note, "GPU memory not measured (no torch with CUDA to ask)")))
    except ProviderUnavailable as exc:
        row.status, row.reason = "unavailable", exc.what
    except Mnv2Error as exc:
        row.status, row.reason = "error", exc.one_line()
    except Exception as exc:  # noqa: BLE001 - one failing row never stops the sweep; it carries its error
        log.debug("row %s failed", row.label, exc_info=True)
        text = str(exc).strip().splitlines()
        row.status, row.reason = "error", f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    finally:
        del runner, bound  # the next row's HostPeak.start() collects what is left, GpuPeak empties torch's cache


def _check_memory(row: BenchRow, path: Path, threads: int) -> None:
    """A ConfigError (the row's error) when the row's estimated memory exceeds what is left (bench.memory)."""
    from ..runtime import read_metadata
    from .memory import check_row_fits, footprint

    try:
        fp = footprint(read_metadata(path))
    except Mnv2Error:
        return  # an unreadable file: loading it says why, in its own words
    check_row_fits(fp, _base(row.format), row.batch, row.provider, threads, path.stat().st_size)


def _placement(row: BenchRow, path: Path, threads: int, cache: dict) -> None:
    from .placement import describe, node_placement

    key = (_base(row.format), row.provider)  # a +graph row's file places its nodes as the plain row's does
    if key not in cache:
        try:
            cache[key] = node_placement(path, row.provider, threads)
        except Exception as exc:  # noqa: BLE001 - the row's timing stands; say the placement is unknown
            log.debug("placement of %s failed", path, exc_info=True)
            cache[key] = None
            row.note = f"node placement unknown ({type(exc).__name__}: {str(exc).strip()[:200]})"
            return
    row.placement = cache[key]
    row.note = describe(cache[key], row.provider)


def _speedups(rows: list[BenchRow]) -> None:
    eager = {(r.provider, r.batch, r.io): r.p50_ms for r in rows if r.ok and r.format == "eager"}
    for r in rows:
        base = eager.get((r.provider, r.batch, r.io))
        if r.ok and base and r.p50_ms:
            r.speedup_vs_eager = base / r.p50_ms


def _log_line(row: BenchRow, samples: _Samples | None = None) -> str:
    head = f"{row.label} batch {row.batch}"
    if not row.ok:
        return f"{head}: {row.status}: {row.reason}"
    if samples is not None and samples.times:
        import statistics

        return f"{head}: p50 {statistics.median(samples.times):.2f} ms over {len(samples.times)} calls"
    return f"{head}: p50 {row.p50_ms:.2f} ms, {row.throughput:.0f} img/s"
