"""The command line of `python -m flows.deliberate`: arguments, the live view, the result."""
