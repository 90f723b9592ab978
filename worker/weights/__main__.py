import sys

from worker.weights.cli import main

sys.exit(main(sys.argv[1:]))
