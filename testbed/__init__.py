"""The test fleet: what the tests, the benchmarks (bench/) and the demo (scripts/demo.py) run against.

Docker engines on loopback addresses (fleet.py), the images built offline (baseimage.py,
agent_image.py, real_consul.py with the Go module in consul_agent/), a TLS engine (tlsengine.py),
a PostgreSQL server (pgserver.py), the controller run as a process (controller_harness.py), and the
models of Consul written here (consul_double.py, agent_standin.py, agentprobe.py), each naming the
Consul source or documentation it follows. Not part of the product: the package build leaves it out
(pyproject.toml) and so does the image (.dockerignore).
"""
