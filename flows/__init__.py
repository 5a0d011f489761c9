"""Prefect flows: the deliberation algorithm, and the command line that runs it."""
