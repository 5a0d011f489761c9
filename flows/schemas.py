"""`python -m flows.schemas` writes the JSON Schemas of the events and of the service's
endpoints to schemas/ at the top of the repository; `python -m flows.schemas --check`
exits 1 if those files differ from the models (the test suite runs that check)."""

from __future__ import annotations

import sys
from pathlib import Path

from agents.schemas import event_schemas, service_schemas

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    expected = event_schemas() | service_schemas()
    if argv == ["--check"]:
        stale = [
            name
            for name, text in expected.items()
            if not (SCHEMA_DIR / name).exists() or (SCHEMA_DIR / name).read_text() != text
        ]
        for name in stale:
            print(f"schemas/{name} differs from the models; run python -m flows.schemas", file=sys.stderr)
        return 1 if stale else 0
    if argv:
        print("usage: python -m flows.schemas [--check]", file=sys.stderr)
        return 2
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in expected.items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(expected)} schemas to {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
