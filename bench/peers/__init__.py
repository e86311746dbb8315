"""Peers of gemma-edge for the head-to-head benchmark: each module builds and times one other system."""
