"""``mnv2 --version``: the package's version and what it runs on, as ``huggingface-cli env`` prints it, for bug
reports. Versions come from the installed packages' metadata (nothing heavy is imported); only ONNX Runtime is
imported, for its providers."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, packages_distributions, version

# import name -> what the report calls it
LIBRARIES = {"torch": "torch", "torchvision": "torchvision", "onnx": "onnx", "onnxruntime": "onnxruntime"}


def library_version(module: str) -> str:
    """The version of the distribution(s) that provide ``module`` (``onnxruntime`` comes as onnxruntime or
    onnxruntime-gpu; both at once shadow each other, so both are named), or ``not installed``."""
    names = sorted(set(packages_distributions().get(module, [])))
    found = []
    for name in names or [module]:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            continue
    if not found:
        return "not installed"
    return ", ".join(v if name == module else f"{v} ({name})" for name, v in found)


def onnxruntime_providers() -> str:
    try:
        import onnxruntime
    except ImportError as exc:  # not installed, or a broken build: the report still prints
        from ..errors import first_line

        return f"not available ({type(exc).__name__}: {first_line(exc)})"
    return ", ".join(onnxruntime.get_available_providers())


def report() -> list[str]:
    from .. import __version__

    lines = [f"mnv2export {__version__}", f"- Python: {platform.python_version()} ({platform.platform()})"]
    lines += [f"- {label}: {library_version(module)}" for module, label in LIBRARIES.items()]
    lines.append(f"- onnxruntime providers: {onnxruntime_providers()}")
    return lines
