"""Settings, the routing-rules schema and the default routing document."""

from config.settings import BackoffPolicy, Settings, get_settings

__all__ = ["BackoffPolicy", "Settings", "get_settings"]
