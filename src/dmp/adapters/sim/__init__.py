"""Simulation adapters: virtual time and an in-memory TXT world."""

from dmp.adapters.sim.clock import SimClock
from dmp.adapters.sim.transport import FakeDns

__all__ = ["FakeDns", "SimClock"]
