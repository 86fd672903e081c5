"""Sagaray: a saga coordinator for Python microservices on Ray."""

__version__ = "0.1.0"
