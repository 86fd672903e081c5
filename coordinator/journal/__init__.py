"""Durable journals: one interface (``base.Journal``), one store per database."""
