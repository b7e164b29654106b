"""The configuration: YAML loading with line numbers, the schema, cross-checks and the key
reference.
"""
