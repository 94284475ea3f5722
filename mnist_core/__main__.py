import sys

from mnist_core.main import main

sys.exit(main())
