"""`python -m flows.service`."""

from flows.service.main import main

raise SystemExit(main())
