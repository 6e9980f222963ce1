"""MOPS: which layers should tasks fine-tuned together freeze, share or keep for themselves, and
what does each choice cost in memory and time and earn in accuracy?

One namespace, its floors depending downward only: `mops.cli` (the command line) -> `mops.bench`
(sweeps, advice, reports) -> `mops.multitask` (training -> sharing -> data) -> `mops.minbert` ->
`mops.kernels` -> `mops.common`. Importing `mops` imports none of them.
"""
