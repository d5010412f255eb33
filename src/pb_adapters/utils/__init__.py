"""Utilities below everything else in the package: bit packing, crash-safe files, names, and
how the command lines report errors.

Nothing here imports another part of :mod:`pb_adapters` except :mod:`pb_adapters.errors`.
"""
