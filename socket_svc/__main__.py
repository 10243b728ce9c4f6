"""`python -m socket_svc`: run this service alone, as `natter serve --role socket` (same flags)."""

from __future__ import annotations

import sys

from natter.cli import main

if __name__ == "__main__":
    main(["serve", "--role", "socket", *sys.argv[1:]])
