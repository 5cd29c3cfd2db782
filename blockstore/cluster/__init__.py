"""The cluster layer: node processes with keep-alive, primary election, events to registered
callers and FFDC, over a coordination store (store.py)."""
