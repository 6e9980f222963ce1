"""Triton kernels for minBERT, one op per file, each with its PyTorch twin in `reference`."""

from .adamw import adamw_step
from .attention import attention
from .backend import BACKENDS, resolve_backend, resolved_backends
from .bias_gelu import bias_gelu
from .layer_norm import layer_norm

__all__ = ["BACKENDS", "adamw_step", "attention", "bias_gelu", "layer_norm", "resolve_backend", "resolved_backends"]
