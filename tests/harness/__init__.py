"""Test and benchmark harness: the stack, the fan-out tier, faults and clusters, started for real.

The one part of tests/ installed with the project (pyproject.toml), so the benches import it
as well as the tests. Shared helpers belong here; conftest files hold only fixtures, and
nothing imports from them.
"""
