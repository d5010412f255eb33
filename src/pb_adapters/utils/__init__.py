"""Utilities below everything else in the package: bit packing, crash-safe files, names, the
command lines' console conventions (one-line errors, exit statuses).

Nothing here imports another part of :mod:`pb_adapters` except :mod:`pb_adapters.errors`.
"""
