"""Baselines: the least each Herald stage must do, measured on the same broker and box."""
