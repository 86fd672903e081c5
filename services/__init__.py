"""Demo microservices that the Sagaray sagas call (see services/README.md).

Submodules are not imported here: ``python -m services.flights`` must find the
module unimported when it runs it as ``__main__``.
"""
