"""Clients of the stack: the Python viewer, the crowd simulator and their latency probes.

- ``registration``: the registration service's client (asyncio and blocking).
- ``viewer``: one viewer: register, connect Socket.IO, receive, recover.
- ``crowd``: many viewers and senders at a planned rate; ``books``: what was accepted
  against what the viewers got; ``probes``: the one ledger of probe taps, and the
  simulator's latencies; ``report``: the run's figures.
- ``simulator``: the command line of ``client_simulator.py``; ``classic``: the original
  simulator's threaded clients.
"""
