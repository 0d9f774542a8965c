"""The dailies page for review, its loopback server, thumbnails and the previz contact sheet."""
