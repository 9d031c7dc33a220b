"""Scenario files: load YAML with source marks, validate against the schema, build frozen models."""
