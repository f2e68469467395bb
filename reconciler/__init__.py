"""consul-reconciler: keeps a Consul datacenter converged on plain Docker hosts."""

__version__ = "0.1.0"  # the version, in this one place (pyproject.toml reads it)
