"""What makes the flow run, and run fast: the task runner (call hosts), Ray, the Prefect API,
the embedded servers of a local run, and the checks made before anything runs."""
