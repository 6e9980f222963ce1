"""Training-step benchmarks.

* CPU: one step (forward, backward, AdamW) of minBERT beside Hugging Face's BertModel on the
  same checkpoint and batch (32 x 128, float32, 2 threads); the ratio of medians
  (Hugging Face / minBERT) is the figure to record: >= 1.0 means minBERT is at least as fast.
* GPU: BERT-base shapes with the torch and the triton backend, bf16 autocast.
* A small sweep, end to end.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import requires_cuda, requires_embedded_checkpoint, synchronize
from mops.bench.records import read_records
from mops.bench.sweep import SweepConfig, run_sweep
from mops.minbert import AdamW, BertConfig, BertModel
from mops.minbert.checkpoint import embedded_checkpoint_dir

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


@requires_embedded_checkpoint
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


@requires_cuda
@pytest.mark.parametrize("length", [128, 512])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_train_step_bert_base_gpu(benchmark, backend, length):
    """BERT-base shapes (randomly initialised: the timing does not depend on the weights),
    bf16 autocast, batch 32; the triton backend's throughput against the torch backend's."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = BertModel(BertConfig(), backend=backend).to(device).train()
    optimizer = AdamW(model.parameters(), lr=1e-5, backend="triton" if backend == "triton" else "torch")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (BATCH, length), generator=generator).to(device)
    lengths = torch.randint(length // 2, length + 1, (BATCH,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long().to(device)

    def forward(m):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return m(ids, mask)["pooler_output"]

    step = _step_fn(model, forward, optimizer)
    for _ in range(3):
        step()  # compile kernels, allocate optimizer state
    torch.cuda.reset_peak_memory_stats()
    benchmark.group = f"train-step-gpu-bert-base-32x{length}"
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        batch=BATCH, length=length, dtype="bf16-autocast", backend=backend,
        tokens_per_second=BATCH * length / benchmark.stats.stats.median,
        peak_allocated_bytes=torch.cuda.max_memory_allocated(),
    )


# all-MiniLM-L6-v2's shape, for a randomly initialised encoder where the checkpoint is not installed
MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


@requires_cuda
@pytest.mark.parametrize("implementation", ["auto", "torch", "triton", "huggingface"])
def test_train_step_minilm_gpu(benchmark, implementation):
    """The main job's step: MiniLM's shape, batch 32 x 128, bf16 autocast, forward + backward +
    AdamW, with each kernels backend (auto: the dispatch table's choice per op, AdamW included)
    beside transformers.BertModel (SDPA attention, torch.optim.AdamW fused) of the same shape.
    Randomly initialised: the step's time does not depend on the weights."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    if implementation == "huggingface":
        transformers = pytest.importorskip("transformers")
        config = transformers.BertConfig(**MINILM_SHAPE, attn_implementation="sdpa")
        model = transformers.BertModel(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        call = lambda m, ids, mask: m(input_ids=ids, attention_mask=mask).pooler_output  # noqa: E731
    else:
        model = BertModel(BertConfig(**MINILM_SHAPE), backend=implementation).to(device).train()
        optimizer = AdamW(model.parameters(), lr=1e-5, backend=implementation)
        call = lambda m, ids, mask: m(ids, mask)["pooler_output"]  # noqa: E731
    ids, mask = _batch(model.config.vocab_size, device)

    def forward(m):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return call(m, ids, mask)

    step = _step_fn(model, forward, optimizer)
    for _ in range(3):
        step()  # compile kernels, allocate optimizer state
    benchmark.group = "train-step-gpu-minilm-32x128"
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(
        batch=BATCH, length=LENGTH, dtype="bf16-autocast", backend=implementation,
        sequences_per_second=BATCH / benchmark.stats.stats.median,
    )


@requires_embedded_checkpoint
def test_small_sweep(benchmark, tmp_path):
    """Two plans of a tiny sweep on the demo corpus, each in its own process: the harness end to end."""
    def sweep():
        results = tmp_path / f"sweep-{len(list(tmp_path.iterdir()))}.jsonl"
        config = SweepConfig(
            checkpoints=["minilm"], plans=["FFFFFF", "FFFSSS"], results=str(results), runs_dir=str(tmp_path / "runs"),
            train=dict(data="demo", steps=10, eval_every=10, batch_size=16, max_length=48, max_eval_examples=64),
        )
        return run_sweep(config, progress=False)

    results = benchmark.pedantic(sweep, rounds=1, iterations=1)
    records = read_records([results])
    assert [r["status"] for r in records] == ["ok", "ok"]
    benchmark.extra_info.update(
        runs=len(records),
        peak_bytes=max(r["memory"]["peak_bytes"] for r in records),
        memory_source=records[0]["memory"]["source"],
        overall={r["config"]["plan"]: r["metrics"]["overall"] for r in records},
    )
