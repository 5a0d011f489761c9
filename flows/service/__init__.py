"""`python -m flows.service`: deliberation as a service on NATS, for services in any
language that hold no Prefect client.

    deliberation.submit   a DeliberationRequest -> {"deliberation_id", "status": "accepted"}
    deliberation.get      {"deliberation_id"}   -> its status, flow run id and, once concluded, result
    deliberation.cancel   {"deliberation_id"}   -> the deliberation stops and concludes cancelled

on the NATS services API (`$SRV.PING|INFO|STATS.deliberation` discover it). A submitted
request is stored in the intake stream before the reply; runners (this process, and any
other started the same way) take requests from it, each at most
DELIBERATION_SERVICE_CONCURRENCY at once, and run each as a flow run of `deliberate`.
A request whose run crashes is delivered again (a resumed run repeats no finished call), up
to DELIBERATION_SERVICE_MAX_TRIES runs; then it is concluded failed. Status changes are
events: deliberation.accepted, .started, then .completed, .failed or .cancelled.

With NATS_URL, VLLM_URL or PREFECT_API_URL unset it starts the same embedded defaults as
`python -m flows.deliberate`, and says on stderr what it started.
"""

from flows.service.main import main, serve

__all__ = ["main", "serve"]
