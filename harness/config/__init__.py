"""Configuration as data: value constraints, the validating schema, method parameters, run and profile settings, the plan."""
