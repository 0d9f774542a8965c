"""Where outputs live: the artifact stores (a local folder, S3) and the address of each step's output."""
