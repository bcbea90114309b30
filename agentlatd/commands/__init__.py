"""One module per CLI subcommand: HELP, EXAMPLES, add_arguments(parser), run(args) -> int."""
