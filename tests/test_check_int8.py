"""`mnv2 check --debug-int8`'s layer names (mnv2export/check/int8.py)."""

import re

import onnx

from mnv2export.check.int8 import _layer_names
from mnv2export.checkpoint import load_checkpoint
from mnv2export.model import build_model


def test_a_residual_add_is_named_after_its_own_block(exported, trained_checkpoint):
    """An Add was named after its first input, the shortcut from the block before ('Add after features.11.conv.2',
    block 11 having no shortcut): it is named after its own block's projection."""
    graph = onnx.load(str(exported.out_dir / "model.onnx")).graph
    names = _layer_names(graph)
    model = build_model(load_checkpoint(trained_checkpoint).model_config)
    adds = [names[node.output[0]] for node in graph.node if node.op_type == "Add"]
    residual = [i for i, block in enumerate(model.features) if getattr(block, "use_res_connect", False)]
    assert len(adds) == len(residual) > 0, adds
    blocks = [int(re.fullmatch(r"Add after features\.(\d+)\.conv\.\d+", name).group(1)) for name in adds]
    assert blocks == residual, (adds, residual)
    convs = [names[node.output[0]] for node in graph.node if node.op_type == "Conv"]
    assert all(re.fullmatch(r"Conv features\.\d+(\.\w+)*", name) for name in convs), convs[:3]
