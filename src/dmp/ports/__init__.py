"""Ports: ``typing.Protocol`` seams for clocks, stores and transports, with their exceptions."""
