"""Small helpers the rest of the package shares: the content-keyed cache, integrity checks, the allocator."""
