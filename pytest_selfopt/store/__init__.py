"""The committed files in baselines/: formats, reading, writing."""
