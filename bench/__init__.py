"""The benchmark: `python -m bench` (or `make bench`) drives the service and its baselines.

One asyncio load generator (loadgen.py) drives every target the same way; targets.py
starts the servers (the project, a minimal Channels consumer, a bare `websockets` server),
gives the project its own throw-away registry and counts its rows; __main__.py runs the
scenarios and prints each as a table with the ratio project/baseline.
"""
