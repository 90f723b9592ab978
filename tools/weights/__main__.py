import sys

from tools.weights.cli import main

sys.exit(main(sys.argv[1:]))
