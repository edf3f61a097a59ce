"""What kind of file a path is: ``pytorch`` (an mnv2 checkpoint), ``torchscript`` or ``onnx``, told by content.

Ground floor: torch-free and ONNX-Runtime-free (``onnx`` is imported only to parse a candidate file), so that the
checkpoint loader, the runtime and every command can ask it, and an ONNX-only install can answer.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from .errors import ArtifactError
from .fileio import ARTIFACT_HINT, require_artifact_file, text_kind

log = logging.getLogger(__name__)


def detect_format(path: str | Path) -> str:
    """``pytorch`` (an mnv2 checkpoint), ``torchscript`` or ``onnx``, from the file's content; an :class:`ArtifactError`
    saying what the file is not (and what it looks like) for anything else. The one place that tells these formats
    apart: the checkpoint loader, ``bench``, ``info``, ``visualize`` and the runtime all ask it (through
    :func:`mnv2export.formats.for_file`, where a format this module does not know tells its own files first)."""
    p = require_artifact_file(path)
    hint = ARTIFACT_HINT
    damaged_zip = ArtifactError(
        "file is a damaged zip archive (truncated?), not a readable checkpoint or TorchScript file",
        path=p,
        hint="it was cut short or damaged (an interrupted copy?): copy it again, or write it again",
    )
    if zipfile.is_zipfile(p):
        try:
            names = zipfile.ZipFile(p).namelist()
        except (zipfile.BadZipFile, OSError):
            raise damaged_zip from None
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") for n in names):
            return "pytorch"
        raise ArtifactError("zip archive is neither a TorchScript file nor a torch checkpoint", path=p, hint=hint)
    kind = text_kind(p)
    if kind:  # onnx.load would read a .json or .txt file as ONNX's text formats and fail in its own words
        raise ArtifactError(f"file is {kind}, not a model", path=p, hint=hint)
    with open(p, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04"):  # a zip's first entry, but no readable directory at the end: cut short
        raise damaged_zip
    if _is_onnx_model(p):
        return "onnx"
    looks = next((f" (it looks like {what})" for magic, what in _MAGIC if head.startswith(magic)), "")
    raise ArtifactError(
        f"file is not an ONNX model, a TorchScript file or a checkpoint{looks}",
        path=p,
        hint=hint + "; an ONNX file cut short or damaged must be exported again",
    )


# what a file passed where a model belongs often is, by its first bytes
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip file"),
    *((bytes([0x80, v]), "a Python pickle (torch.save's legacy format, or pickle.dump)") for v in range(2, 6)),
)


def _is_onnx_model(p: Path) -> bool:
    """Whether ``p`` parses as an ONNX ModelProto that holds a graph (a few ms for a 14 MB model). Protobuf reads many
    short byte strings as a message of unknown fields, so parsing alone does not tell; a model has an IR version and a
    graph. Damage inside the graph is onnx.checker's to find (:func:`mnv2export.runtime.onnx_model.load_onnx_model`)."""
    import onnx

    try:
        model = onnx.load(str(p), format="protobuf", load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or whatever a foreign file makes the parser raise
        log.debug("not ONNX: %r", exc)
        return False
    return model.ir_version > 0 and model.HasField("graph")
