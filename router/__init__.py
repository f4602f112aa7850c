"""Rule matching and candidate ordering (pure); health and breakers come on top."""
