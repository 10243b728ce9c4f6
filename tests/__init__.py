"""natter's test suite: real servers, real databases, real processes."""
