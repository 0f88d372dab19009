"""The run directory on disk: atomic writes, the stored spec, markers and metrics."""
