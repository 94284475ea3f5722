"""`python -m launch.lifeline FD ARGS...`: `prefect ARGS...`, stopped when the process that started it dies, however
it dies (SIGKILL included).

The starter (launch/server.py, for a run's own server) keeps the write end of a pipe and hands over its read end as
FD; nothing is ever written to it. When the starter is gone, the kernel closes its end, the read below returns
end-of-file, and this process sends SIGTERM to its process group: the server and whatever it started stop as they
do on Ctrl-C. A pipe, not Linux's parent-death signal: no foreign-function call, no race with a starter that dies
before the child is ready (end-of-file is there whenever the read starts), and the same on every POSIX system.
Prefect's command line runs in this very process (what the `prefect` script does), so no process is added.
"""

import os
import signal
import sys
import threading


def _stop_group_when_closed(fd: int) -> None:
    while os.read(fd, 1):  # nothing is written: this returns b"" once the starter's end is closed
        pass
    os.killpg(os.getpgrp(), signal.SIGTERM)


def main() -> None:
    fd = int(sys.argv[1])
    threading.Thread(target=_stop_group_when_closed, args=(fd,), name="lifeline", daemon=True).start()
    sys.argv = ["prefect", *sys.argv[2:]]
    from prefect.cli import app

    sys.exit(app())


if __name__ == "__main__":
    main()
