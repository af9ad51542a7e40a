"""The version of pgwire-proxy, written only here: CMakeLists.txt reads this line for project(VERSION)
(and so `pgwire-proxy --version`), pyproject.toml for the distribution's version."""

__version__ = "0.1.0"
