import sys

from qdelta.harness.cli import main

sys.exit(main())
