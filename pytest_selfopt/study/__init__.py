"""The simulation study (selfopt simulate)."""
