"""`agentlatd bench`: the design note's section 12 evaluation on one machine."""
