"""Bounded compilation: one demo epoch of the Triton backend, training and evaluation, launches
few distinct kernel specializations (each one a compile on a GPU), however many sequence
lengths its batches have. Counted under the interpreter by mops.kernels.launches, which reports what
Triton would key its binaries on."""

from __future__ import annotations

from collections import Counter

from collations import record_collations

from mops.kernels.launches import record_launches
from mops.multitask.training.config import TrainConfig
from mops.multitask.training.trainer import Trainer

# Ten kernels (attention fwd/delta/dkdv/dq, layer_norm fwd/bwd, their partial sums, bias_gelu
# fwd/bwd, AdamW). A kernel varies with dropout on (training) or off (evaluation) and with
# whether a residual or a row count makes an argument divisible by 16: a few variants each,
# never one per sequence length.
MAX_VARIANTS_PER_KERNEL = 3
MAX_VARIANTS = 20


def test_a_demo_epoch_launches_few_specializations(tmp_path):
    # The embeddings are frozen so AdamW's interpreted launches stay small; a training set of 128
    # examples per task keeps the epoch to a minute under the interpreter. The lengths still vary
    # from batch to batch, as in any epoch.
    config = TrainConfig(tasks=["sst", "para", "sts"], plan="S,emb=F", checkpoint="random", hidden_size=64,
                         num_layers=1, data="demo", epochs=1, batch_size=32, max_train_examples=128,
                         max_eval_examples=32, backend="triton", pad_multiple=16, out_dir=str(tmp_path),
                         progress=False)
    trainer = Trainer(config)
    collated = record_collations(trainer)

    with record_launches() as log:
        record = trainer.train()
    lengths = Counter(batch.inputs.input_ids.shape[1] for batch in collated)

    assert record["timing"]["steps"] == trainer.batches_per_epoch and record["kernels"]["attention"] == "triton"
    assert len(lengths) >= 2 and all(length % 16 == 0 for length in lengths)  # several padded lengths were seen
    per_kernel = {name: len(variants) for name, variants in log.by_kernel().items()}
    assert {"attention.fwd", "attention.dq", "layer_norm.bwd", "bias_gelu.bwd", "adamw.step"} <= set(per_kernel)
    assert max(per_kernel.values()) <= MAX_VARIANTS_PER_KERNEL, per_kernel
    assert len(log.distinct()) <= MAX_VARIANTS, per_kernel
    assert len(log.launches) > 10 * len(log.distinct())  # the epoch reused its few binaries many times
