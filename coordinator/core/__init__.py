"""The pure core: definitions, events, replay and decide.

Nothing in this package performs I/O, reads the clock or draws random numbers:
time comes in as an argument and jitter is derived from the execution's identity,
so that replaying a journal always rebuilds the same state.
"""
