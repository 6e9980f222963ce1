"""Training one plan: the settings, run assembly, the trainer and its parts (schedule, sampling,
precision, devices, ledger, CUDA graphs, the frozen-prefix cache), peak-memory prediction, export."""
