"""spinrun's runtime: the SpinRun API (spec, status, loader, CRD), the plan, the SPIN steps
(generate, convert, train, evaluate), the local driver and the `spin` CLI. It imports nothing
of the operator (which imports it) and nothing of Kubernetes."""

__version__ = "0.1.0"
