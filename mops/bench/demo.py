"""The main job on the embedded checkpoint: six sharing plans on the demo corpus.

Sized so the whole sweep finishes in a few minutes on two CPU cores; `mops demo` runs it.
"""

from __future__ import annotations

DEMO_PLANS = ["FFFFFF", "FFFSSS", "F2S2I2", "F2S2[sst+para|sts]2", "SSSSSS", "IIIIII"]
DEMO_TRAIN = dict(data="demo", steps=120, batch_size=16, lr=1e-4, max_length=48, sampling="round_robin",
                  eval_every=40)
DEMO_RESULTS = "runs/demo/demo.jsonl"
