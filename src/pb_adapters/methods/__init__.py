"""Adapter methods, one folder each (:mod:`.piggyback`, :mod:`.ksm`, :mod:`.packnet`).

The registry itself lives in :mod:`pb_adapters.registry`; its names are re-exported here because
this is where a method's author looks for them.
"""

from __future__ import annotations

from ..registry import MethodSpec, available_methods, get_method, register_method

__all__ = ["MethodSpec", "available_methods", "get_method", "register_method"]
