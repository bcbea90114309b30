"""Agents: registration, placement on home CPUs, step statistics (issue 4)."""
