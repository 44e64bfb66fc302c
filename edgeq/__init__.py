"""edgeq: post-training quantization, export and on-device profiling for hybrid CNN+Transformer models."""

__version__ = "0.1.0"

from .errors import EdgeqError  # noqa: E402,F401
