"""The plan of a run, as pure functions: run-directory layout, the stage walker, per-iteration hyperparameters, step fingerprints."""
