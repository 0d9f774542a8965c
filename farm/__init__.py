"""Render farm core: storyboard in, render plan out. Imports no vendor SDK and no Celery."""
