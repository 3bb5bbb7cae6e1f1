"""`python -m graddoctor.cli ...`: the same as the `graddoctor` command."""
import sys

from . import main

sys.exit(main())
