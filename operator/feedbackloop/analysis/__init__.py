"""Canary analysis: pure, sequential canary-vs-stable judgement (see docs/canary-analysis.md)."""
