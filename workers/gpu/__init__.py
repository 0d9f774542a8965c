"""Rented GPU pods: RunPod (runpod's one home), the pool and its leases, the ledger, SSH."""
