"""Multitask fine-tuning along its data flow: `data` (corpora, tasks, batches) -> `sharing` (plans
and the model built from them) -> `training` (settings, run assembly, the trainer and its parts)."""
