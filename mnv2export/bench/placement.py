"""Which execution provider ran each node of an ONNX model: ONNX Runtime's own profiler says it.

ONNX Runtime's CUDA provider has no kernel for some nodes (an INT8 QDQ model's QuantizeLinear / DequantizeLinear
pairs around ops it cannot fuse, for instance); those run on the CPU, with Memcpy nodes between the two, and the
row's latency is then not GPU speed. To tell, a separate session with profiling on (files in a temporary folder,
removed) runs one inference after the timed loop; every ``Node`` event of the profile carries the provider that
ran it and its op type. The timed session itself never profiles.
"""

from __future__ import annotations

import collections
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SHORT = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}


def placement_from_profile(events: list[dict[str, Any]]) -> dict[str, Any]:
    """From ONNX Runtime profiler events: nodes per provider, the op types per provider, memcpy nodes.

    A node that ran several times in the profile is counted once (by name)."""
    seen: dict[str, tuple[str, str]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args") or {}
        name = e["name"][: -len("_kernel_time")]
        seen.setdefault(name, (str(args.get("provider", "?")), str(args.get("op_name", "?"))))
    nodes: collections.Counter[str] = collections.Counter()
    ops: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for provider, op in seen.values():
        short = SHORT.get(provider, provider)
        nodes[short] += 1
        ops[short][op] += 1
    memcpy = sum(n for counter in ops.values() for op, n in counter.items() if op.startswith("Memcpy"))
    return {
        "nodes": dict(nodes),
        "ops": {p: dict(c) for p, c in ops.items()},
        "memcpy": memcpy,
        "total": sum(nodes.values()),
    }


def node_placement(
    path: str | Path, provider: str, threads: int | None = None, batch: np.ndarray | None = None
) -> dict[str, Any]:
    """Run ``path`` once on ``provider`` with ONNX Runtime's profiler and return :func:`placement_from_profile`."""
    from ..export.names import INPUT_NAME
    from ..runtime import create_session, read_metadata, session_options

    if batch is None:
        c, h, w = read_metadata(path)["input_size"]
        batch = np.zeros((1, int(c), int(h), int(w)), np.float32)
    folder = Path(tempfile.mkdtemp(prefix="mnv2-bench-profile-"))
    try:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / "ort")  # never into the working directory
        session, _ = create_session(path, provider, options=options)
        session.run(None, {INPUT_NAME: batch})
        profile = Path(session.end_profiling())
        events = json.loads(profile.read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return placement_from_profile(events)


def describe(placement: dict[str, Any] | None, provider: str) -> str | None:
    """'142/142 nodes on cuda' or 'partly on CPU: 31 of 170 nodes (QuantizeLinear x12, ...) + 24 memcpy'."""
    if not placement:
        return None
    total = placement["total"]
    off = {p: n for p, n in placement["nodes"].items() if p != provider}
    if not off:
        return f"{total}/{total} nodes on {provider}"
    parts = []
    for p, n in sorted(off.items()):
        top = sorted(placement["ops"].get(p, {}).items(), key=lambda kv: (-kv[1], kv[0]))
        ops = ", ".join(f"{op} x{k}" for op, k in top[:4]) + (", ..." if len(top) > 4 else "")
        parts.append(f"{n} of {total} nodes on {p} ({ops})")
    memcpy = f", {placement['memcpy']} memcpy nodes" if placement["memcpy"] else ""
    return "partly off " + provider + ": " + "; ".join(parts) + memcpy
