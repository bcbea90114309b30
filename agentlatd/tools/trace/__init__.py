"""`agentlatd trace`: stage attribution of agent step latency (design note sections 9 and 10)."""
