"""`python -m ingest …` is the same as the `ingest` console script."""

import sys

from ingest.cli import main

sys.exit(main())
