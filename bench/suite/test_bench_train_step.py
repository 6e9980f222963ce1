"""One training step (forward, backward, AdamW) of minBERT beside Hugging Face's BertModel.

Same checkpoint, same batch (32 x 128, float32). On the CPU both run on 2 threads; the
ratio of medians (Hugging Face / minBERT) is the figure to record: >= 1.0 means minBERT's
step is at least as fast.
"""

from __future__ import annotations

import pytest
import torch

from bench.suite.conftest import synchronize
from minbert import AdamW, BertModel
from minbert.checkpoint import embedded_checkpoint_dir

BATCH, LENGTH = 32, 128


def _batch(vocab_size: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab_size, (BATCH, LENGTH), generator=generator)
    lengths = torch.randint(LENGTH // 2, LENGTH + 1, (BATCH,), generator=generator)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    return ids.to(device), mask.to(device)


def _step_fn(model, forward, optimizer):
    def step():
        optimizer.zero_grad(set_to_none=True)
        pooled = forward(model)
        pooled.float().pow(2).mean().backward()
        optimizer.step()
        synchronize()

    return step


@pytest.fixture
def cpu_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("implementation", ["minbert", "huggingface"])
def test_train_step_cpu(benchmark, cpu_threads, implementation):
    device = torch.device("cpu")
    if implementation == "minbert":
        model = BertModel.from_pretrained(backend="torch").train()
        ids, mask = _batch(model.config.vocab_size, device)
        forward = lambda m: m(ids, mask)["pooler_output"]  # noqa: E731
        optimizer = AdamW(model.parameters(), lr=1e-5)
    else:
        transformers = pytest.importorskip("transformers")
        model = transformers.BertModel.from_pretrained(str(embedded_checkpoint_dir())).train()
        ids, mask = _batch(model.config.vocab_size, device)
        forward = lambda m: m(input_ids=ids, attention_mask=mask).pooler_output  # noqa: E731
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step = _step_fn(model, forward, optimizer)
    step()  # warm-up: allocator, optimizer state
    benchmark.group = "train-step-cpu-minilm-32x128"
    benchmark.extra_info.update(batch=BATCH, length=LENGTH, dtype="float32", threads=2, implementation=implementation)
    benchmark.pedantic(step, rounds=5, iterations=1)
