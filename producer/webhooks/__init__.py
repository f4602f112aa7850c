"""Vendor webhooks (delivery receipts), one module per vendor, each exposing ``router``."""

from __future__ import annotations

from fastapi import APIRouter

#: Every vendor webhook router; app.py mounts them all. Add a vendor's module here.
ROUTERS: list[APIRouter] = []
