"""A cache of the frozen prefix's outputs, so frozen layers cost nothing after the first epoch.

A plan's frozen bottom (the embeddings and the `F` layers below the first trainable piece) runs
in eval mode, without dropout and without autograd: for a given example it returns the same
hidden states every epoch. The first time an example passes through it, its states at the top of
the prefix are kept (real tokens only, in the training precision); later batches holding only
cached examples skip the prefix, and even the tokenizer, and start from the stored states
re-padded to the batch's length. When the whole encoder is frozen, the pooled vector is kept.

Keys are (task, split, side, index in the split): side "a" is a sentence or a joint pair,
"b" a siamese pair's second sentence, "ba" a symmetric joint pair read in the other order.
Nothing is saved in checkpoints: a resumed run refills it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from mops.multitask.sharing.model import PrefixOutput
from mops.multitask.sharing.plan import SharingPlan

# Where the cache may live: GPU memory when it takes at most this share of the free GPU memory,
# else host memory when it takes at most this share of the available host memory, else nowhere.
GPU_SHARE = 0.25
HOST_SHARE = 0.5
log = logging.getLogger(__name__)


def predict_bytes(token_counts: int, examples: int, hidden_size: int, dtype: torch.dtype, pooled: bool) -> int:
    """Bytes the cache takes: per real token (or per example when pooled) one hidden vector."""
    vectors = examples if pooled else token_counts
    return vectors * hidden_size * torch.empty((), dtype=dtype).element_size()


def describe_cache(plan: SharingPlan, hidden_size: int, examples: int | None, mean_length: float) -> str:
    """What the cache would hold for a data set of this size (training + dev), for the command line."""
    prefix = plan.frozen_prefix_length()
    if prefix == 0:
        return "frozen-prefix cache: none (the plan has no frozen prefix)"
    if examples is None:
        return "frozen-prefix cache: pass --examples N (and --mean-length L) to size it"
    pooled = prefix == plan.num_layers + 2
    tokens = round(examples * mean_length)
    sizes = {name: predict_bytes(tokens, examples, hidden_size, dtype, pooled) / 2**20
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    kept = "one pooled vector per example" if pooled else f"{hidden_size} values per real token"
    return (f"frozen-prefix cache for {examples:,} examples of {mean_length:g} tokens on average ({kept}): "
            f"{sizes['fp32']:,.1f} MiB in fp32, {sizes['bf16']:,.1f} MiB under bf16 (off: --no-cache-frozen)")


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def choose_location(predicted: int, device: torch.device) -> tuple[torch.device | None, str]:
    """Where a cache of `predicted` bytes goes for training on `device`, and why (None: it does not fit)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if predicted <= GPU_SHARE * free:
            return device, f"GPU memory ({predicted / 2**20:,.0f} MiB of {free / 2**20:,.0f} MiB free)"
    host = available_host_bytes()
    if host is None or predicted <= HOST_SHARE * host:
        shown = f" of {host / 2**20:,.0f} MiB available" if host is not None else ""
        return torch.device("cpu"), f"host memory ({predicted / 2**20:,.0f} MiB{shown})"
    return None, (f"it would take {predicted / 2**20:,.0f} MiB, more than {HOST_SHARE:.0%} of the "
                  f"{host / 2**20:,.0f} MiB of host memory available")


def open_cache(frozen_prefix: int, pooled: bool, wanted: bool, tokens: int, examples: int, hidden_size: int,
               dtype: torch.dtype, device: torch.device, pad_multiple: int) -> tuple[FrozenPrefixCache | None, dict]:
    """The cache for a run, or None, and what the run record says of it: whether it is on, its
    predicted size (`tokens` real tokens of `examples` encodings) and why it is where it is."""
    if not frozen_prefix:
        return None, {"enabled": False, "reason": "the plan has no frozen prefix"}
    predicted = predict_bytes(tokens, examples, hidden_size, dtype, pooled)
    plan = {"enabled": False, "predicted_bytes": predicted, "pooled": pooled}
    if not wanted:
        return None, {**plan, "reason": "turned off (--no-cache-frozen)"}
    location, why = choose_location(predicted, device)
    if location is None:
        log.warning("frozen-prefix cache off: %s; training goes on without it", why)
        return None, {**plan, "reason": why}
    return FrozenPrefixCache(location, dtype, pooled, pad_multiple), {**plan, "enabled": True, "reason": why}


class FrozenPrefixCache:
    """The stored prefix outputs of every example seen so far, and what they cost and saved."""

    def __init__(self, location: torch.device, dtype: torch.dtype, pooled: bool, pad_multiple: int = 1) -> None:
        self.location = location
        self.dtype = dtype
        self.pooled = pooled
        self.pad_multiple = pad_multiple
        self._store: dict[tuple[str, str, str], dict[int, torch.Tensor]] = {}
        self.bytes = 0
        self.hits = 0  # examples served from the cache
        self.misses = 0  # examples whose prefix ran (and was stored)
        self.fill_seconds = 0.0

    def lookup(self, task: str, split: str, side: str, indices: list[int]) -> list[torch.Tensor] | None:
        """The stored states of every example of a batch, or None unless all of them are stored."""
        stored = self._store.get((task, split, side), {})
        found = [stored.get(i) for i in indices]
        return None if any(t is None for t in found) else found

    def store(self, task: str, split: str, side: str, indices: list[int], hidden: torch.Tensor,
              attention_mask: torch.Tensor | None) -> None:
        """Keep each example's real-token states (or its pooled vector) from a batch the prefix just ran."""
        stored = self._store.setdefault((task, split, side), {})
        values = hidden.detach().to(self.location, self.dtype)
        lengths = None if self.pooled else attention_mask.sum(dim=1).tolist()
        for row, index in enumerate(indices):
            if index in stored:
                continue
            # .clone(): a slice would keep the whole batch tensor alive
            kept = values[row].clone() if self.pooled else values[row, : lengths[row]].clone()
            stored[index] = kept
            self.bytes += kept.numel() * kept.element_size()
        self.misses += len(indices)

    @contextlib.contextmanager
    def filling(self) -> Iterator[None]:
        """Time spent filling: running the prefix for examples not yet stored, and storing them."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.fill_seconds += time.perf_counter() - started

    def assemble(self, states: list[torch.Tensor], device: torch.device) -> PrefixOutput:
        """Stored states as a batch: pooled vectors stacked, or token states re-padded to the longest
        row rounded up to `pad_multiple`, with the attention mask the padding needs."""
        self.hits += len(states)
        if self.pooled:
            return PrefixOutput(torch.stack(states).to(device, non_blocking=True), None)
        lengths = torch.tensor([s.shape[0] for s in states])
        width = -(-int(lengths.max()) // self.pad_multiple) * self.pad_multiple
        hidden = torch.stack([F.pad(s, (0, 0, 0, width - s.shape[0])) for s in states])  # (B, W, H)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (B, W)
        return PrefixOutput(hidden.to(device, non_blocking=True), mask.to(device, non_blocking=True))

    def stats(self) -> dict:
        seen = self.hits + self.misses
        return {"bytes": self.bytes, "where": str(self.location), "dtype": str(self.dtype).removeprefix("torch."),
                "hits": self.hits, "misses": self.misses, "hit_rate": round(self.hits / seen, 4) if seen else None,
                "fill_seconds": round(self.fill_seconds, 3)}
