"""Measure the peak GPU memory of real bf16 training steps, in a process of its own, beside the
prediction for each plan: `python tests/gpu_peak_probe.py PLAN...` prints one JSON line per plan.

A fresh process holds nothing but what a training run would: no tensor or fixture left by an
earlier test inflates the allocator's figures. The peak is taken over the second step (AdamW's
state exists from the first on, as in any later step), and counts everything allocated, cuBLAS's
workspaces included, as a run's own figure would."""

from __future__ import annotations

import gc
import json
import sys

import torch

from mops.minbert import AdamW, BertModel, BertTokenizer
from mops.multitask.data.batching import Collator
from mops.multitask.data.tasks import make_tasks
from mops.multitask.sharing.model import MultitaskBert
from mops.multitask.sharing.plan import parse_plan
from mops.multitask.training.precision import Precision
from mops.multitask.training.prediction import predict

TASKS = ["sst", "para", "sts"]


def measure(plan_text: str, pretrained: BertModel, tokenizer: BertTokenizer, tasks: list) -> dict:
    device, bf16 = torch.device("cuda"), Precision("bf16", "cuda")
    model = MultitaskBert(pretrained, parse_plan(plan_text, TASKS, 6), tasks).to(device)
    batch = Collator(tokenizer, 128, pad_multiple=128)(tasks[0].loader("train")[:32]).to(device)  # 32 x 128
    inputs = {"batch": batch.inputs, "batch_b": None, "prefix": None, "prefix_b": None}
    # MOPS's own AdamW, as training runs it: its step buffers are part of the peak the prediction names
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, backend="auto")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with bf16.autocast():
            loss = model.loss("sst", model("sst", **inputs), batch.labels)
        loss.backward()
        optimizer.step()

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    prediction = predict(model, 32, 128, bf16, "auto")
    parts = {k: v for k, v in prediction.as_dict().items() if k.endswith("bytes") and not isinstance(v, dict)}
    return {"plan": plan_text, "measured": measured, "prediction": parts}


def main(plans: list[str]) -> None:
    pretrained, tokenizer = BertModel.from_pretrained(backend="torch"), BertTokenizer.from_pretrained()
    tasks = make_tasks(TASKS, "demo")
    for plan_text in plans:
        print(json.dumps(measure(plan_text, pretrained, tokenizer, tasks)), flush=True)
        gc.collect()  # the plan's model, optimizer and batch are gone before the next is measured


if __name__ == "__main__":
    main(sys.argv[1:])
