"""Shared by training and evaluation: the confidence parser, the task verifiers and (later) the metrics."""
