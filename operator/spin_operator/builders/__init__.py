"""Pure builders of every Kubernetes object a SpinRun owns, one module per concern; nothing here
talks to a server or imports kopf, so `spin render` and the golden tests see what the operator creates."""
