"""Adapters: concrete implementations of the ports (DNS, HTTP, sqlite, simulation)."""
