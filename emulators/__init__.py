"""Loopback servers that speak the paid providers' wire protocols on 127.0.0.1: fal.ai (`fal_server`),
RunPod (`runpod_server`), ComfyUI (`comfyui_server`, `comfy_ws`) and a pod's SSH (`ssh_pod`).

Test tooling, not product: nothing in farm, workers or tasks imports them, except `farm up
--fal-emulator`, which asks for `fal_server` only when told to. Their own dependencies (asyncssh) come
with the `emulators` extra. Import a module by its full name: this package re-exports nothing, so
`python -m emulators.fal_server` does not import the module twice.
"""
