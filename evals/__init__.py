"""Evaluation beside the library: rewards, quality metrics, run records, tables and figures."""
