"""Vendor adapters behind one small interface (see ``providers.base``)."""
