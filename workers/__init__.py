"""Engine backends (embedded, fal.ai, ComfyUI on RunPod), one module each behind one interface.

Empty until the execution issue: the plan in `farm` is pure data and needs no backend yet.
"""
