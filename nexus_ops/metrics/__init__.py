"""Metrics: Prometheus exposition, sampling, history, queries and figures."""
