"""The ComfyUI backend: its HTTP client, websocket progress, API-format workflows and life on a pod."""
