"""natter: self-hostable instant messaging; generated contracts, SDK and command line."""

__version__ = "0.1.0"
