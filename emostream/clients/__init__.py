"""Clients of the stack: the Python viewer, the crowd simulator and their latency probes."""
