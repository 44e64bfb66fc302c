"""Small non-classifier models for the tests, trained or built in seconds.

- ``TextRecognizer``: a text-line recogniser as deployed for OCR (conv backbone → attention neck → CTC
  head) on synthetic lines: each character is a fixed random 10x8 glyph, 4 px apart, with noise; input
  1x1x12xW with a variable width W, output [B, W/4, 1 + len(CHARSET)] (blank = 0).
- ``TwoHeads``: a conv + attention model returning a dict of two outputs (class logits, a box).
- ``TwoInputs``: image plus a side vector, fused before the head.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHARSET = "0123456789"
GLYPH_W, GAP, HEIGHT = 8, 4, 12


def glyphs(seed: int = 7) -> np.ndarray:
    return (np.random.default_rng(seed).random((len(CHARSET), 10, GLYPH_W)) > 0.5).astype(np.float32)


def render(texts: list[str], seed: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[N, 1, HEIGHT, width] padded lines and their true widths."""
    table, rng = glyphs(), np.random.default_rng(seed)
    widths = np.array([len(t) * (GLYPH_W + GAP) + GAP for t in texts])
    width = width or int(widths.max())
    x = np.zeros((len(texts), 1, HEIGHT, width), dtype=np.float32)
    for i, text in enumerate(texts):
        for j, ch in enumerate(text):
            left = GAP + j * (GLYPH_W + GAP)
            x[i, 0, 1:11, left: left + GLYPH_W] = table[CHARSET.index(ch)]
        x[i, :, :, : widths[i]] += 0.15 * rng.standard_normal((1, HEIGHT, widths[i]))
    return x, widths


def random_texts(n: int, seed: int, lengths=(3, 8)) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(CHARSET), rng.integers(lengths[0], lengths[1] + 1))) for _ in range(n)]


class TextRecognizer(nn.Module):
    edgeq_input_shape = (1, 1, HEIGHT, 64)
    edgeq_dynamic_axis = (3, 16, 1280)

    def __init__(self, classes: int = len(CHARSET) + 1, dim: int = 32):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = x.mean(2).transpose(1, 2)                       # [B, T, dim], T = W / 4
        q, k, v = self.qkv(self.norm(x)).unsqueeze(1).chunk(3, dim=-1)   # one head: [B, 1, T, dim]
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).squeeze(1))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x)


def train_recognizer(steps: int = 300, seed: int = 0) -> TextRecognizer:
    """CTC training on fresh synthetic lines (about 10 s on 2 cores); deterministic for a seed."""
    torch.manual_seed(seed)
    model = TextRecognizer()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        texts = random_texts(32, seed * 1000 + step)
        x, widths = render(texts, seed=step)
        log_probs = model(torch.from_numpy(x)).log_softmax(-1).transpose(0, 1)   # [T, B, C]
        frames = torch.from_numpy((widths + 3) // 4)
        targets = torch.tensor([CHARSET.index(c) + 1 for t in texts for c in t])
        loss = F.ctc_loss(log_probs, targets, frames, torch.tensor([len(t) for t in texts]), blank=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def write_lines(path, n: int, seed: int, lengths=(3, 8)) -> list[str]:
    """An .npz with padded lines ``x``, their ``lengths`` (widths) and the transcripts as ``labels``."""
    texts = random_texts(n, seed, lengths)
    x, widths = render(texts, seed)
    np.savez(path, x=x, lengths=widths, labels=np.array(texts))
    return texts


class TwoHeads(nn.Module):
    edgeq_input_shape = (1, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.attn = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.cls, self.box = nn.Linear(16, 5), nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.conv(x)).flatten(2).transpose(1, 2)
        q, k, v = self.attn(x).unsqueeze(1).chunk(3, dim=-1)
        x = (x + self.proj(F.scaled_dot_product_attention(q, k, v).squeeze(1))).mean(1)
        return {"logits": self.cls(x), "box": self.box(x)}


class TwoInputs(nn.Module):
    edgeq_input_shape = ((1, 3, 16, 16), (1, 6))

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.side = nn.Linear(6, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, image, meta):
        x = F.relu(self.conv(image)).mean((2, 3))
        return self.head(x + F.relu(self.side(meta)))


def _seeded(cls):
    """A factory's model: the same random init every call (the tests compare runs)."""
    torch.manual_seed(0)
    return cls()


def build_recognizer() -> TextRecognizer:
    """Factory for ``--model tests/seq_models.py:build_recognizer`` (weights come from --weights)."""
    return TextRecognizer()


def build_two_heads() -> TwoHeads:
    return _seeded(TwoHeads)


def build_two_inputs() -> TwoInputs:
    return _seeded(TwoInputs)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.w_1, self.w_2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.w_2(F.silu(self.w_1(self.norm(x))))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c))


class ConvModule(nn.Module):
    """Pointwise → GLU → depthwise (1-D, as a 1xK conv2d) → BatchNorm → SiLU → pointwise."""

    def __init__(self, dim: int, kernel: int = 7):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv2d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv2d(dim, dim, (1, kernel), padding=(0, kernel // 2), groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.pointwise_conv2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x):                                    # [B, T, dim]
        c = self.norm(x).transpose(1, 2).unsqueeze(2)        # [B, dim, 1, T]
        c = self.pointwise_conv2(F.silu(self.bn(self.depthwise_conv(F.glu(self.pointwise_conv1(c), dim=1)))))
        return c.squeeze(2).transpose(1, 2)


class ConformerBlock(nn.Module):
    """FFN/2 → self-attention → conv module → FFN/2 (WeNet's layout and names)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.feed_forward_macaron, self.self_attn = FeedForward(dim), SelfAttention(dim)
        self.conv_module, self.feed_forward = ConvModule(dim), FeedForward(dim)

    def forward(self, x):
        x = x + 0.5 * self.feed_forward_macaron(x)
        x = x + self.self_attn(x)
        x = x + self.conv_module(x)
        return x + 0.5 * self.feed_forward(x)


class TinyConformer(nn.Module):
    """Features [B, T, 20] → linear front end → two Conformer blocks → CTC head."""

    edgeq_input_shape = (1, 50, 20)
    edgeq_dynamic_axis = (1, 8, 3000)

    def __init__(self, feats: int = 20, dim: int = 32, classes: int = 12):
        super().__init__()
        self.front = nn.Linear(feats, dim)
        self.blocks = nn.ModuleList(ConformerBlock(dim) for _ in range(2))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.front(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def build_conformer() -> TinyConformer:
    return _seeded(TinyConformer)


class TokenClassifier(nn.Module):
    """Token ids [B, 16] → embedding → self-attention → feed-forward → 3 classes."""

    edgeq_input_shape = (1, 16)

    def __init__(self, vocab: int = 50, dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.self_attn, self.feed_forward = SelfAttention(dim), FeedForward(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.self_attn(x)
        return self.head((x + self.feed_forward(x)).mean(1))


def build_token_classifier() -> TokenClassifier:
    return _seeded(TokenClassifier)


def build_converted_recognizer():
    """The trained recogniser exported to ONNX at width 64 and converted back with onnx2torch: a flat
    graph of ONNX-op modules, as users' converted models are."""
    import io
    from pathlib import Path

    import onnx
    from onnx2torch import convert
    model = TextRecognizer()
    model.load_state_dict(torch.load(Path(__file__).parent / "data" / "recognizer.pt", weights_only=True))
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, HEIGHT, 64),), buffer, dynamo=False, opset_version=17)
    return convert(onnx.load_from_string(buffer.getvalue())).eval()


class SingleHeadAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        return self.proj(torch.softmax(q @ k.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1) @ v)


class FlatHybrid(nn.Module):
    """About 40 layers: a conv stem, six residual conv blocks, four transformer layers (attention and MLP
    branches), a head — what issue 12 asks the block map to find in a graph converted from ONNX."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.ReLU(), nn.Conv2d(dim, dim, 3, 1, 1), nn.ReLU())
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1), nn.ReLU(),
                                                 nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.ReLU(),
                                                 nn.Conv2d(dim, dim, 1)) for _ in range(6))
        self.layers = nn.ModuleList(nn.ModuleList([SingleHeadAttention(dim), FeedForward(dim)]) for _ in range(4))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.convs:
            x = x + block(x)
        x = x.flatten(2).transpose(1, 2)
        for attention, mlp in self.layers:
            x = x + attention(x)
            x = x + mlp(x)
        return self.head(x.mean(1))


def build_converted_flat_hybrid():
    """FlatHybrid exported to ONNX at 32×32 and converted back with onnx2torch (module names are ONNX node
    names; no hierarchy is left)."""
    import io

    import onnx
    from onnx2torch import convert
    buffer = io.BytesIO()
    # opset 16: LayerNorm spelled out in primitive ops, as in many exported models (and onnx2torch's
    # LayerNormalization converter loses the normalized shape of this graph)
    torch.onnx.export(_seeded(FlatHybrid).eval(), (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False,
                      opset_version=16)
    return convert(onnx.load_from_string(buffer.getvalue())).eval()


class FixedBatch(nn.Module):
    """A graph that bakes batch 1 into a reshape, as ONNX exports converted back to torch do."""

    edgeq_input_shape = (1, 3, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(64, 4)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).reshape(1, 8, 64)).mean(1)


def build_fixed_batch() -> FixedBatch:
    return _seeded(FixedBatch)
