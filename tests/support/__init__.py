"""Test support: real services started by fixtures, and isolated network namespaces."""
