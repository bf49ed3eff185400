"""The selfopt command."""
