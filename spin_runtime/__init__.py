"""spinrun's runtime: the SPIN steps (generate, convert, train, evaluate), the plan and the
local driver. No Kubernetes imports here."""

__version__ = "0.1.0"
