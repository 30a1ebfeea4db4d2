"""What every stage shares: the request and the run plan, errors, storage and the cache, precision, progress."""
