"""spinrun's Kubernetes operator (kopf): drives SpinRuns through the plan as Jobs."""
