"""The cluster layer (SEEDS.md 1-4). So far: the coordination store it is built on (store.py).
Nodes, keep-alive, election, events and FFDC are not built yet."""
