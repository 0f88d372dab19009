"""The operator's pure decision: from a SpinRun and its observed children to actions, the new
status and events. No clock, no API, no kopf."""
