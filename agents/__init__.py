"""The deliberation domain: roles, prompts, models, the LLM client, the event bus, settings.

Nothing here imports Prefect or Ray, so it can be tested and reused without them.
"""
