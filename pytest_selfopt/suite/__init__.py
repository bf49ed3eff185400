"""The user's suite: config, cases, reply checks, YAML reading, credentials."""
