"""`python -m client …`: the same subcommands as `infinitetalk submit|status|cancel|ui`."""
import sys

from client.cli import main

sys.exit(main())
