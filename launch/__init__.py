"""The top layer: the `mnist` command (cli.py) and what running things from a command line takes: a flow run with
its checks and summary (runs.py), a Prefect API and a terminal's signals (local.py), starting and stopping Prefect
servers (server.py, lifeline.py), the local stack (stack.py), the quiet start of a script (entry.py) and the
installer (install.py). It imports the layers below it (flows, tasks, reporting, mnist_core); none imports it."""
