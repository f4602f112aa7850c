"""Vendor webhooks (delivery receipts), one module per vendor, each exposing ``router``."""

from __future__ import annotations

from fastapi import APIRouter

from producer.webhooks import ses, twilio

#: Every vendor webhook router; app.py mounts them all. Add a vendor's module here.
ROUTERS: list[APIRouter] = []
ROUTERS.append(ses.router)
ROUTERS.append(twilio.router)
