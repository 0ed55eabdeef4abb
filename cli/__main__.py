"""`python -m cli` runs the `decide` command line."""

from cli.app import main

main()
