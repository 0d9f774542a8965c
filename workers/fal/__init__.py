"""The fal.ai backend, fal_client's one home: payloads, the pay-once request book, outputs."""
