"""Metrics: counters kept where the work happens (SagaHosts, journal writers, the API's
admission), gathered by the API at scrape time into one Prometheus exposition."""
