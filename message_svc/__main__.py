"""`python -m message_svc`: run this service alone, as `natter serve --role message` (same flags)."""

from __future__ import annotations

import sys

from natter.cli import main

if __name__ == "__main__":
    main(["serve", "--role", "message", *sys.argv[1:]])
