"""Embedded servers for the demo and the tests (dev profile)."""
