"""`python -m geodetect` runs the command line."""

from geodetect.cli import main

main()
