"""Test and benchmark harness: the stack, the fan-out tier, faults and clusters, started for real."""
