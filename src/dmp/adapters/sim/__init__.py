"""Simulation adapters: virtual time (and, later, a simulated network)."""

from dmp.adapters.sim.clock import SimClock

__all__ = ["SimClock"]
