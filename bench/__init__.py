"""The benchmark: `python -m bench` (or `make bench`) drives the service and its baselines.

One asyncio load generator (loadgen.py) drives every target the same way; targets.py
starts the servers (the project under daphne or uvicorn-fast, the leanest Channels
consumer on floor_settings.py, Starlette + uvicorn, a bare `websockets` server), gives the
project its own throw-away registry and counts its rows; __main__.py runs the scenarios,
prints each as a table with ratios against the floor and the peer, and checks the targets.
scale.py (`make bench-scale`) holds 50,000 sessions over three processes.
"""
