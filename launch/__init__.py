"""Process plumbing shared by the command line, the flows, the stack, the tests and the benchmarks: the `mnist`
command, starting and stopping Prefect servers, a terminal's signals, and the quiet start of a script."""
