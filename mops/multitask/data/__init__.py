"""Corpora as examples: the CS224N files, the demo corpus, downloads; task records; batching."""
