"""Helpers shared by test modules.

Test modules import these (``from tests.support.server import Server``), never
each other and never ``conftest``: a fixture belongs in ``conftest.py``, a plain
helper here. ``tests/test_imports.py`` keeps it so.
"""
