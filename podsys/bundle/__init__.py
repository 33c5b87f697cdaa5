"""The offline bundle: private apt resolution, the signed repository, vendor artifacts, the ISO."""
