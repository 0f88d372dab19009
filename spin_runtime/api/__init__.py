"""The SpinRun API: the spec and status models, the one strict loader and the generated CRD."""
