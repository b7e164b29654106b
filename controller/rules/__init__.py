"""The safety rules: shared model, the pure decision core, its mode-transition table, config rules
and the reload merge (pure: no I/O, no clock).
"""
