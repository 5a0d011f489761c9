"""The key-value buckets the ledger and the results live in: looked up once per
connection, created with the configured settings by whoever needs one first."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from agents.config import BusConfig


class Buckets:
    def __init__(self, js: JetStreamContext, config: BusConfig) -> None:
        self._js = js
        self._config = config
        self._found: dict[str, KeyValue] = {}

    async def find(self, name: str) -> KeyValue | None:
        """The bucket, or None if it does not exist."""
        if name not in self._found:
            try:
                self._found[name] = await self._js.key_value(name)
            except BucketNotFoundError:
                return None
        return self._found[name]

    async def open(self, name: str) -> KeyValue:
        """The bucket, created unless it exists (its settings are then the creator's)."""
        bucket = await self.find(name)
        if bucket is None:
            bucket = self._found[name] = await self._js.create_key_value(
                KeyValueConfig(
                    bucket=name,
                    description=f"{name.lower().replace('_', ' ')} by deliberation id",
                    history=1,
                    ttl=self._config.results_max_age_seconds or None,
                    storage=StorageType(self._config.stream_storage),
                    replicas=self._config.stream_replicas,
                )
            )
        return bucket
