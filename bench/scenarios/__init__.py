"""One module per scenario of the issue; each ``run(ctx)`` returns its table rows."""
