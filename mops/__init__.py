"""The `mops` program: the command line over bench, multitask, minbert and kernels. Nothing imports it."""
