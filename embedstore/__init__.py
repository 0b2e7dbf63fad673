"""embedstore: run each encoder once per dataset, answer every robustness analysis from the cache."""

__version__ = "0.1.0"
