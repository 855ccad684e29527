"""Test helpers shipped with autocomp: tiny models and data, an analytic evaluator, conformance suites."""
