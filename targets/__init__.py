"""Deployment target profiles (TOML), packaged into the wheel as ``edgekit.targets``."""
