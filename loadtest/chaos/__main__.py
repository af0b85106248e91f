import sys

from loadtest.chaos.cli import main

sys.exit(main())
