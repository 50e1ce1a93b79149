"""Kernel families: each has reference.py, its back ends and plan.py."""
