"""`python -m mops` runs the command line."""

from .cli import main

main()
