"""`python -m channel_svc`: run this service alone, as `natter serve --role channel` (same flags)."""

from __future__ import annotations

import sys

from natter.cli import main

if __name__ == "__main__":
    main(["serve", "--role", "channel", *sys.argv[1:]])
