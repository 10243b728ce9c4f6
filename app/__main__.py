"""`python -m app` is the `natter` command."""

from app.cli import main

main()
