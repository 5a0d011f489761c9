"""The I/O the domain needs: the LLM client, NATS, the code sandbox, secrets."""
