"""Operator and developer tools above the service: demo, mock panel, scenario runner, verify,
monitor, history, check-config, terminal view and broker launcher.
"""
