"""Prefect tasks: thin wrappers that call into `agents/` and add retries, timeouts, caching."""
