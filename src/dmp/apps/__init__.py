"""Composition roots and use cases: the node, the CLI and the aggregator."""
