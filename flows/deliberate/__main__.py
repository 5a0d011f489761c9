"""`python -m flows.deliberate "TASK" [options]`: the command line (flows/cli/).

The flow lives in the package beside this file, so that it is always imported as
`flows.deliberate`, the name Prefect's deployments and the Ray workers import it by, and
never executed a second time as `__main__`."""

from flows.cli.main import main

raise SystemExit(main())
