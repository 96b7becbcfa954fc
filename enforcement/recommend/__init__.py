"""Least-privilege policy from observed flows: recommend, evaluate (NetworkPolicy semantics), diff."""
