"""vllm-fleet: an Ansible collection and a thin command line that serve vLLM on a fleet."""

__version__ = "0.1.0"
