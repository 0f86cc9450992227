"""YAML task definitions and the data generators they reference."""
