"""Hostile inputs for every file the plugin reads (issue 12): the corpus and its helpers."""
