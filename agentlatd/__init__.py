"""agentlatd: keep AI agent control loops on IRQ-quiet CPUs.

The pipeline (see README, "Architecture"): sample -> model -> plan -> apply,
with IO only at the two ends.
"""

__version__ = "0.1.0"
