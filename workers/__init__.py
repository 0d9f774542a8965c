"""Backends that render a step (embedded, fal.ai, ComfyUI on rented GPU pods), one subpackage each behind
the one interface in `base.py`; `backends.py` picks one by name."""
