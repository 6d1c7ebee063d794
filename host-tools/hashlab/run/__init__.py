"""Running scenarios: their YAML model, the guest driver, the orchestrator, the load
phase, and the comparison of datapaths (rows)."""
