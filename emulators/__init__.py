"""Loopback emulators of the paid providers' HTTP protocols, for tests and offline demos.

`emulators.fal_server` serves fal.ai's queue and storage API on 127.0.0.1. Import it by its full
name: this package deliberately re-exports nothing, so `python -m emulators.fal_server` does not
import the module twice.
"""
