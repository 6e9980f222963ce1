"""Triton kernels for minBERT, one op per file, each with its PyTorch twin in `reference`."""

from mops.kernels.adamw import adamw_step
from mops.kernels.attention import attention
from mops.kernels.bias_gelu import bias_gelu
from mops.kernels.dispatch import BACKENDS, resolve_backend, resolved_backends
from mops.kernels.layer_norm import layer_norm

__all__ = ["BACKENDS", "adamw_step", "attention", "bias_gelu", "layer_norm", "resolve_backend", "resolved_backends"]
