"""mnv2export: train MobileNetV2 classifiers, export them (TorchScript, ONNX FP32/INT8/FP16), check and benchmark them."""


def _version() -> str:
    """The installed package's version (pyproject.toml is its one source); from a source tree that was never
    installed, pyproject.toml's own line; else ``0+unknown``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mnv2export")
    except PackageNotFoundError:
        pass
    try:
        from pathlib import Path

        import tomllib

        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, ValueError, KeyError, ImportError):
        return "0+unknown"


__version__ = _version()
