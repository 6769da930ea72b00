"""Board descriptions: one YAML file per board, validated on load."""
