"""Celery layer: app configuration and one task per step kind.

Empty until the execution issue: planning and estimating run without a broker.
"""
