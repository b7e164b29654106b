"""The running service: the control loop and its wiring of rules, config and adapters."""
