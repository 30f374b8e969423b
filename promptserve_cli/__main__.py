"""`python -m promptserve_cli ...` is the `promptserve` command."""

from promptserve_cli import main

main()
