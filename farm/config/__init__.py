"""How the farm is set up and connected: settings, credentials, secret redaction, the Redis link."""
