"""A tiny conv + attention hybrid for unit tests (runs in milliseconds).

stem conv+BN → two residual conv blocks → a conv bridge into a transformer block
(attention + MLP) → a conv projecting back → pooled linear head.
"""
import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.pw(F.relu(self.dw(F.relu(self.bn1(self.conv1(x))))))


class Attention(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * 2)
        self.fc2 = nn.Linear(dim * 2, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HybridStage(nn.Module):
    def __init__(self, c_in, dim):
        super().__init__()
        self.conv_in = nn.Conv2d(c_in, dim, 3, padding=1, bias=False)
        self.bn_in = nn.BatchNorm2d(dim)
        self.transformer = nn.ModuleList([TransformerBlock(dim)])
        self.conv_out = nn.Conv2d(dim, c_in, 1)

    def forward(self, x):
        y = F.relu(self.bn_in(self.conv_in(x)))
        b, c, h, w = y.shape
        t = y.flatten(2).transpose(1, 2)
        for block in self.transformer:
            t = block(t)
        y = t.transpose(1, 2).reshape(b, c, h, w)
        return x + self.conv_out(y)


class TinyHybrid(nn.Module):
    edgeq_input_shape = (1, 3, 32, 32)

    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.stem_conv = nn.Conv2d(in_chans, 16, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.blocks = nn.ModuleList([ConvBlock(16), ConvBlock(16), HybridStage(16, 32), ConvBlock(16)])
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        x = F.max_pool2d(x, 2)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def tiny_hybrid():
    """Factory used as ``tests/tiny_models.py:tiny_hybrid``; trained-looking BN statistics, fixed seed."""
    torch.manual_seed(0)
    model = TinyHybrid()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def not_a_module():
    return 42


class Overflowing(nn.Module):
    """A conv whose output overflows float32 to ±inf on ordinary inputs (×1e38)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.conv(x) * 1e38


class Clamping(nn.Module):
    """Clamps its input twice, so the model output stays finite although the block before is not."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.clamp(x, -1, 1)) + torch.clamp(x * 0.5, -1, 1)


class FragileNet(nn.Module):
    """One block whose reconstruction loss is NaN (inf − inf): it must fall back, the rest must learn."""

    edgeq_input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Overflowing(8), Clamping(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.blocks(torch.relu(self.stem(x)))
        return self.head(x.mean((2, 3)))


def fragile_net():
    torch.manual_seed(0)
    return FragileNet().eval()


class OutlierNet(nn.Module):
    """One layer (``fragile``) reads a tensor with a ×2000 outlier channel (its weights undo the scale, so the
    float model is ordinary); a per-tensor int8 scale for that input wipes out the other 15 channels."""

    edgeq_input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.fragile = nn.Conv2d(16, 16, 1)
        self.tail = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)
        scale = torch.ones(16)
        scale[3] = 2000.0
        self.register_buffer("scale", scale.view(1, -1, 1, 1))

    def forward(self, x):
        x = F.relu(self.mid(F.relu(self.stem(x))))
        x = F.relu(self.fragile(x * self.scale))
        return self.head(F.relu(self.tail(x)).mean((2, 3)))


def outlier_net():
    torch.manual_seed(0)
    model = OutlierNet()
    with torch.no_grad():
        model.fragile.weight[:, 3] /= 2000.0
    return model.eval()


class DepthwiseHeavy(nn.Module):
    """Large depthwise convs (int8 gains nothing there on CPU runtimes: the int8 form only adds
    Quantize/Dequantize passes over big tensors) next to a wide linear layer."""

    edgeq_input_shape = (1, 3, 112, 112)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 48, 3, padding=1)
        self.dw = nn.ModuleList([nn.Conv2d(48, 48, 7, padding=3, groups=48) for _ in range(3)])
        self.fc1 = nn.Linear(48, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for dw in self.dw:
            x = x + F.relu(dw(x))
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


def depthwise_heavy():
    torch.manual_seed(0)
    return DepthwiseHeavy().eval()


class DepthwiseIntoConv(nn.Module):
    """A depthwise conv whose output goes straight into another conv (ONNX Runtime fuses DQ→Conv→Q there)."""

    edgeq_input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pw(self.dw(torch.relu(self.stem(x))))
        return self.head(torch.relu(x).mean((2, 3)))


def depthwise_into_conv():
    torch.manual_seed(0)
    model = DepthwiseIntoConv()
    with torch.no_grad():  # very different channel ranges: per-channel input scales would win the choice
        model.stem.weight.mul_(torch.logspace(-2, 1, 16).view(-1, 1, 1, 1))
    return model.eval()


class UnsupportedOp(nn.Module):
    """A conv, then torch.special.i0 (no ONNX translation, no CoreML conversion), then a linear."""

    edgeq_input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.special.i0(torch.tanh(self.conv(x))).mean((2, 3)))


def unsupported_op():
    torch.manual_seed(0)
    return UnsupportedOp().eval()


class FusedDepthwise(nn.Module):
    """Depthwise convs after a quantized conv, with and without ReLU (ONNX Runtime fuses that conv's output
    quantizer into QLinearConv: it must stay per-tensor), and one after a float op (GELU: per-channel is fine)."""

    edgeq_input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw_a = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.conv_b = nn.Conv2d(16, 16, 1)
        self.dw_b = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw_c = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        a = self.dw_a(F.relu(self.stem(x)))        # quantized conv → ReLU → dwconv
        b = self.dw_b(self.conv_b(F.gelu(a)))      # quantized conv → dwconv
        c = self.dw_c(F.gelu(b))                   # float op → dwconv
        return self.head(F.relu(c).mean((2, 3)))


def fused_depthwise():
    torch.manual_seed(0)
    model = FusedDepthwise()
    with torch.no_grad():  # very different channel ranges: per-channel scales would win where offered
        spread = torch.logspace(-2, 1, 16).view(-1, 1, 1, 1)
        model.stem.weight.mul_(spread)
        model.conv_b.weight.mul_(spread)
        model.dw_b.weight.mul_(spread)
    return model.eval()


class NhwcBlock(nn.Module):
    """A ConvNeXt/EdgeNeXt-style block: depthwise conv, then LayerNorm and an MLP on the NHWC tensor (linear
    layers on rank-4 inputs), then a head on the pooled rank-2 features."""

    edgeq_input_shape = (1, 3, 32, 32)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        x = x + self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def nhwc_block():
    torch.manual_seed(0)
    return NhwcBlock().eval()


class NhwcGrnBlock(NhwcBlock):
    """The same block with ConvNeXt-V2's global response norm between the linear layers (a norm over the NHWC
    tensor's spatial axes): the openvino form cannot write it channels-first, so its linear layers keep rank-4
    inputs."""

    def forward(self, x):
        x = self.stem(x)
        y = F.gelu(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1))))
        y = y * (y.norm(p=2, dim=(1, 2), keepdim=True) + 1e-6)
        x = x + self.fc2(y).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def nhwc_grn_block():
    torch.manual_seed(0)
    return NhwcGrnBlock().eval()


class ShapeDerivedPositions(nn.Module):
    """EdgeNeXt's Fourier positional encoding in small: a tensor made from the input's shape only (ones,
    cumsum, sin), projected by a conv and added to the features: a constant to OpenVINO."""

    edgeq_input_shape = (1, 3, 32, 32)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.project = nn.Conv2d(2, 8, 1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        ones = torch.ones(x.shape[0], x.shape[2], x.shape[3], device=x.device)
        pos = torch.stack([ones.cumsum(1), ones.cumsum(2)], 1)
        x = x + self.project(torch.sin(pos / 3.0))
        return self.head(self.mix(x).mean((2, 3)))


def shape_derived_positions():
    torch.manual_seed(0)
    return ShapeDerivedPositions().eval()


class LocalValueAttention(nn.Module):
    """EfficientFormerV2's attention in small: q, k, v from 1x1 convs on an NCHW map, and v also through a
    depthwise conv (its local-value branch): v is read by the attention MatMul and by a conv, so edgeq's own
    quantizer of v (for the conv) is the one the openvino form shares with the MatMul."""

    edgeq_input_shape = (1, 3, 32, 32)

    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.q, self.k, self.v = (nn.Conv2d(dim, dim, 1) for _ in range(3))
        self.v_local = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        v = self.v(x)
        attn = (self.q(x).flatten(2).transpose(1, 2) @ self.k(x).flatten(2) * c ** -0.5).softmax(-1)
        out = (attn @ v.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        x = x + self.proj(torch.relu(out + self.v_local(v)))
        return self.head(x.mean((2, 3)))


def local_value_attention():
    torch.manual_seed(0)
    return LocalValueAttention().eval()


class MultiHeadLocalValueAttention(LocalValueAttention):
    """The same with heads, written as timm's EfficientFormerV2 Attention2d writes it: q, k, v reshaped to
    [B, heads, d, N], and the output (attn @ v) transposed back to [B, heads, d, N] before the local value's Add."""

    heads = 2

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        q = self.q(x).reshape(b, self.heads, -1, h * w).permute(0, 1, 3, 2)
        k = self.k(x).reshape(b, self.heads, -1, h * w)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(b, self.heads, -1, h * w).permute(0, 1, 3, 2)
        attn = (q @ k * (c // self.heads) ** -0.5).softmax(-1)
        out = (attn @ v).transpose(2, 3).reshape(b, c, h, w) + v_local
        x = x + self.proj(torch.relu(out))
        return self.head(x.mean((2, 3)))


def multi_head_local_value_attention():
    torch.manual_seed(0)
    return MultiHeadLocalValueAttention().eval()


class PatchTokens(nn.Module):
    """MobileViT's block in small, written as timm writes it: a conv's map unfolded into tokens of 2×2 patches
    (Reshape/Transpose chains), LayerNorm and an MLP over the tokens, folded back into a 1×1 conv."""

    edgeq_input_shape = (1, 3, 32, 32)

    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.conv_1x1 = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.conv_1x1(torch.relu(self.stem(x)))
        b, c, h, w = x.shape
        nh, nw = h // 2, w // 2
        t = x.reshape(b * c * nh, 2, nw, 2).transpose(1, 2)
        t = t.reshape(b, c, nh * nw, 4).transpose(1, 3).reshape(b * 4, nh * nw, c)
        t = t + self.fc2(F.gelu(self.fc1(self.norm(t))))
        t = t.contiguous().view(b, 4, nh * nw, c).transpose(1, 3).reshape(b * c * nh, nw, 2, 2)
        x = t.transpose(1, 2).reshape(b, c, h, w)
        return self.head(torch.relu(self.proj(x)).mean((2, 3)))


def patch_tokens():
    torch.manual_seed(0)
    return PatchTokens().eval()
