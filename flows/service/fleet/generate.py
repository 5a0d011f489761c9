"""The fleet orchestrator API's Python stubs, generated from
schemas/fleet/orchestrator/v1/orchestrator.proto with grpcio-tools, and committed beside
this file so the service needs no code generator to run.

    .venv/bin/python -m flows.service.fleet.generate           # write them
    .venv/bin/python -m flows.service.fleet.generate --check   # exit 1 if they are stale

protoc names the message module by its path (`fleet.orchestrator.v1`) in the gRPC module's
import; here it is imported from this package instead.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parents[2] / "schemas"
PROTO = Path("fleet/orchestrator/v1/orchestrator.proto")
OUTPUTS = ("orchestrator_pb2.py", "orchestrator_pb2.pyi", "orchestrator_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # a dev dependency: only generating needs it

    with tempfile.TemporaryDirectory() as raw:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--python_out={raw}",
                f"--pyi_out={raw}",
                f"--grpc_python_out={raw}",
                str(PROTO_ROOT / PROTO),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {PROTO} (exit {code})")
        generated = Path(raw) / PROTO.parent
        for name in OUTPUTS:
            text = (generated / name).read_text()
            text = re.sub(r"^from fleet\.orchestrator\.v1 import", "from . import", text, flags=re.M)
            (out_dir / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.service.fleet.generate")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    args = parser.parse_args(argv)
    if not args.check:
        generate(PACKAGE_DIR)
        print(f"wrote {', '.join(OUTPUTS)} to {PACKAGE_DIR}")
        return 0
    with tempfile.TemporaryDirectory() as fresh:
        generate(Path(fresh))
        stale = [n for n in OUTPUTS if (Path(fresh) / n).read_text() != (PACKAGE_DIR / n).read_text()]
    if stale:
        print(f"stale: {', '.join(stale)}; run python -m flows.service.fleet.generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
