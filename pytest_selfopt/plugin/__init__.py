"""The pytest plugin: the only pytest-aware package."""
