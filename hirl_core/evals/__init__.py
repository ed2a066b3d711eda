"""Evaluations of a pre-trained backbone; each has a `run_<name>(cfg)` stage entry point."""
