"""Rate-limit algorithms over Redis (atomic Lua), policies and HTTP headers (see issue 5)."""
