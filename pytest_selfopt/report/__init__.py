"""What a person reads: terminal, Markdown, JSON, history view, why."""
