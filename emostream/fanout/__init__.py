"""The fan-out tier: from aggregates on Kafka to viewers on Socket.IO.

``membership``: the live subscriber nodes, rebuilt from their heartbeats on a compacted topic.
``socketio_kafka``: python-socketio's Kafka client manager, fixed for kafka-python 3 and batched.
``node``: one subscriber node (Flask-SocketIO in gevent mode).
``publisher``: the main publisher and the per-cluster publishers.
``manager``: assignment to the least-loaded node, scaling, and the node launcher.
``registration``: the registration HTTP API.
``ops``: what the non-Flask services share: /healthz and /metrics, file limits, signals.
"""
