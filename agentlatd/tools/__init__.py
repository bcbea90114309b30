"""Tools that run beside the daemon, never inside it: the benchmark (`agentlatd bench`,
bench/*.py) and the tracers (`agentlatd trace`).

The daemon's import closure excludes this package (tests/unit/test_layering.py checks it,
and cli.py loads only the command it runs), so a bug or a heavy import here cannot reach
the daemon that `agentlatd run` starts.
"""
