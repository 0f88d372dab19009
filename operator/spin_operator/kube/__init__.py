"""The operator's view of the cluster: API verbs, the observed state of a run's children, and
what this process created but has not seen back yet."""
