"""A scripted OpenAI-compatible chat server on 127.0.0.1 for the winner evaluation: each
proposal call (OpenAI `user` = the agent id) gets the text the evaluation assigned to that
agent; each ranking call gets a ballot written by a function of the proposals it shows."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SHOWN = re.compile(
    r"^Proposal ([A-Z]{1,2}):\n(.*?)(?=\n\nProposal [A-Z]{1,2}:\n|\n\nBriefly assess)", re.S | re.M
)


@dataclass
class Script:
    """What the server answers for one deliberation."""

    proposals: dict[str, tuple[str, str]] = field(default_factory=dict)  # agent id -> (text, finish)
    # The ballot: from {label: proposal text shown under it} to the answer's text.
    ballot: Callable[[dict[str, str]], str] = lambda shown: "I cannot decide."


class ScriptedServer:
    def __init__(self) -> None:
        self.script = Script()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                text, finish = server.answer(request)
                self._send(
                    {
                        "model": "scripted",
                        "choices": [
                            {"message": {"role": "assistant", "content": text}, "finish_reason": finish}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(text.split()))},
                    }
                )

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def answer(self, request: dict[str, Any]) -> tuple[str, str]:
        user = request.get("user") or ""
        if "." not in user:  # a proposal: the call id is the bare agent id
            return self.script.proposals.get(user, ("(no script)", "stop"))
        prompt = request["messages"][-1]["content"]
        shown = {label: text.strip() for label, text in _SHOWN.findall(prompt)}
        return self.script.ballot(shown), "stop"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._http.shutdown()
