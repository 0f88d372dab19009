"""The `spin <step>` commands: generate, convert, train, evaluate, init-run, each over a StepContext."""
