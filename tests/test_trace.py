"""Capture, BatchNorm folding and the graph-derived block map."""
import pytest
import torch

from edgeq import api
from edgeq.models.intake import load_model
from edgeq.trace.blocks import build_block_map
from edgeq.trace.capture import capture, fold_batchnorm, has_dynamic_batch, to_graph_module


@pytest.fixture(scope="module")
def tiny_graph(tiny_spec):
    loaded = load_model(tiny_spec)
    exported = capture(loaded)
    return loaded, exported


def test_batchnorm_folding_keeps_outputs(tiny_graph):
    loaded, exported = tiny_graph
    gm = to_graph_module(exported)
    x = torch.randn(3, 3, 32, 32)
    before = gm(x)
    folded = fold_batchnorm(gm)
    assert len(folded) == 5  # stem_bn, bn1 of the three conv blocks, the bridge's bn_in
    assert not any("batch_norm" in str(n.target) for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), loaded.module(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gm(x), before, atol=1e-5, rtol=1e-5)


def test_dynamic_batch(tiny_graph):
    _, exported = tiny_graph
    assert has_dynamic_batch(exported)
    assert to_graph_module(exported)(torch.randn(5, 3, 32, 32)).shape == (5, 10)


def test_tiny_block_map_kinds(tiny_graph):
    _, exported = tiny_graph
    gm = to_graph_module(exported)
    fold_batchnorm(gm)
    bm = build_block_map(gm)
    kinds = {b.name: b.kind for b in bm.blocks}
    assert kinds["stem_conv"] == "stem"
    assert kinds["blocks.0"] == "conv" and kinds["blocks.1"] == "conv"
    assert kinds["blocks.2"] == "bridge"              # conv_in feeds the first attention
    assert kinds["blocks.2.transformer.0.attn"] == "attention"
    assert kinds["blocks.2.transformer.0.mlp"] == "mlp"
    assert kinds["blocks.2#2"] == "bridge"            # conv_out takes the transformer output back
    assert kinds["blocks.3"] == "conv"
    assert kinds["head"] == "head"
    # every quantizable layer is in exactly one block, in execution order
    members = [m for b in bm.blocks for m in b.layers]
    assert members == list(bm.layers)
    dw = [layer for layer in bm.layers.values() if layer.op == "dwconv"]
    assert len(dw) == 3
    # MACs: the stem conv 3x3, 3->16, 16x16 output
    stem = next(layer for layer in bm.layers.values() if layer.module == "stem_conv")
    assert stem.macs == 16 * 16 * 16 * 3 * 9


TIMM_HYBRIDS = ["mobilevit_xxs", "mobilevitv2_050", "efficientformerv2_s0", "edgenext_xx_small",
                "fastvit_t8", "levit_128s", "nextvit_small", "resnet18"]
HAS_BRIDGE = {"mobilevit_xxs", "mobilevitv2_050", "efficientformerv2_s0", "edgenext_xx_small", "nextvit_small"}
HAS_ATTENTION = HAS_BRIDGE | {"levit_128s"}


@pytest.mark.parametrize("name", TIMM_HYBRIDS)
def test_inspect_timm_models(name):
    torch.manual_seed(0)
    result = api.inspect(f"timm:{name}", num_classes=10)
    kinds = result["kinds"]
    assert kinds.get("stem", 0) >= 1 and kinds.get("head", 0) >= 1
    assert (kinds.get("bridge", 0) > 0) == (name in HAS_BRIDGE)
    assert (kinds.get("attention", 0) > 0) == (name in HAS_ATTENTION)
    assert result["total_macs"] > 1e8
    quantized = {op for op, info in result["quantizable_ops"].items() if info["quantized"]}
    assert "conv2d.default" in quantized
    assert sum(len(b["layers"]) for b in result["blocks"]) == len(result["layers"])


class _SplitExpand(torch.nn.Module):
    """q/k/v split by sizes and a broadcast parameter, as timm's mobilevitv2 has them."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 9, 1)
        self.token = torch.nn.Parameter(torch.randn(1, 1, 1, 1))

    def forward(self, x):
        q, k, v = self.proj(x).split([1, 4, 4], dim=1)
        return q * k.sum(1, keepdim=True) + v + self.token.expand(x.shape[0], 4, x.shape[2], x.shape[3])


def test_a_converted_graph_with_split_sizes_and_expand_is_captured():
    """onnx2torch's Split (sizes as an input) and Expand read their shape operands with ``tolist()`` and
    ``torch.Size(tensor)``, which torch.export cannot capture; the fold writes them with fixed sizes."""
    import io

    import onnx
    from onnx2torch import convert

    from edgeq.trace.converted import fold_reshape_shapes
    torch.manual_seed(0)
    model, x = _SplitExpand().eval(), torch.randn(1, 3, 8, 8)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=16)
    converted = convert(onnx.load_from_string(buffer.getvalue())).eval()
    assert {"OnnxSplit13", "OnnxExpand"} <= {type(m).__name__ for m in converted.modules()}
    assert fold_reshape_shapes(converted, (x,)) >= 2
    exported = torch.export.export(converted, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), atol=1e-6, rtol=1e-6)
