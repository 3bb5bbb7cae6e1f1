"""`python -m graddoctor ...`: the same as the `graddoctor` command."""
import sys

from .cli import main

sys.exit(main())
