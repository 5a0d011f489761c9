"""Servers and processes for the tests and the benchmarks alike: a real Prefect server and
worker, the service's runner process, process trees, and the check that a deliberation's
events agree with its stored result. It imports neither `tests` nor `bench`."""
