"""Fusion rules, one module per op family; graph/fusion.py decides their order."""
