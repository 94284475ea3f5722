"""`python -m mnist_core predict INPUT...`: `mnist predict` without the `mnist` command's other verbs (no Prefect)."""

import sys

from mnist_core.inference.predict_command import USAGE, main

args = sys.argv[1:]
if not args or args[0] != "predict":
    print(USAGE, file=sys.stderr)
    sys.exit(2)
sys.exit(main(args[1:]))
