"""Which encoder pieces the tasks freeze, share or keep: the plan grammar, the multitask model built
from a plan, LoRA, BitFit, pooling, and what the built model holds in memory."""
