"""The deliberation service's probe (deliberation-service.yaml runs it from a ConfigMap):
exits 0 once the service instance in this pod answers a ping through NATS.

Any replica answers `$SRV.PING.deliberation`, so an answer alone says nothing about this
pod; each instance names its host (the pod) in its metadata, and the probe waits for this
pod's own. That answer comes from the service's event loop on its own NATS connection, with
its endpoints registered: what a caller needs of it.

With --alive (the liveness probe) it also exits 0 when it cannot connect to NATS at all
(down, not resolvable, refusing the token): the pod is not at fault, the service reconnects
by itself once NATS is back, and a restart would only cut the deliberations it runs.
Readiness still fails then.

A runner waiting for its model server answers pings too; readiness also needs its ready
file (DELIBERATION_SERVICE_READY_FILE) to say `ready`, and prints what it says instead.

Only nats-py (in the image) and the environment the service has (NATS_URL, NATS_TOKEN):
a probe runs every few seconds and should start in well under a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import nats
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

SERVICE_NAME = "deliberation"  # agents.service.SERVICE_NAME; tests/integration/test_deploy.py checks both
HOST_METADATA = "host"  # agents.service.HOST_METADATA
TIMEOUT_SECONDS = 5.0


async def probe(alive_only: bool) -> int:
    host = socket.gethostname()
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                os.environ["NATS_URL"],
                token=os.environ.get("NATS_TOKEN") or None,
                connect_timeout=TIMEOUT_SECONDS,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # a refused first connect: tried twice (0 is for ever)
                reconnect_time_wait=0.5,
                error_cb=_remember,
            ),
            TIMEOUT_SECONDS,
        )
    except (OSError, TimeoutError, NatsError) as exc:
        cause = _errors[-1] if _errors else exc
        print(f"cannot reach NATS at {os.environ['NATS_URL']}: {cause!r}", file=sys.stderr)
        return 0 if alive_only else 1
    try:
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.PING.{SERVICE_NAME}", b"", reply=inbox)
        await asyncio.wait_for(_own_reply(replies, host), TIMEOUT_SECONDS)
    except TimeoutError:
        print(f"no {SERVICE_NAME} instance on {host} answered within {TIMEOUT_SECONDS} s", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    return 0 if alive_only else ready_file_says_ready()


def ready_file_says_ready() -> int:
    """0 unless the service keeps a ready file (DELIBERATION_SERVICE_READY_FILE) that does
    not say `ready`: a runner waiting for its model server answers pings, and says why it
    waits there (flows/service/readiness.py)."""
    path = os.environ.get("DELIBERATION_SERVICE_READY_FILE")
    if not path:
        return 0
    try:
        state = Path(path).read_text().strip()
    except OSError as exc:
        print(f"the service has not said it is ready ({path}: {exc.strerror})", file=sys.stderr)
        return 1
    if state == "ready":
        return 0
    print(state, file=sys.stderr)
    return 1


_errors: list[Exception] = []


async def _remember(exc: Exception) -> None:
    """Instead of nats-py's default, a traceback per attempt: the probe says why in one line."""
    _errors.append(exc)


async def _own_reply(replies: Subscription, host: str) -> None:
    async for msg in replies.messages:
        try:
            reply = json.loads(msg.data)
        except ValueError:
            continue  # not a services-API ping reply
        if isinstance(reply, dict) and (reply.get("metadata") or {}).get(HOST_METADATA) == host:
            return


if __name__ == "__main__":
    raise SystemExit(asyncio.run(probe(alive_only="--alive" in sys.argv[1:])))
