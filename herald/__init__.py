"""Herald: notification and OTP delivery. Shared domain types, storage and the CLI live here."""
