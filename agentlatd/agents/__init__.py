"""Agents: registration, placement on home CPUs, upkeep, completion chains (docs/architecture.md)."""
