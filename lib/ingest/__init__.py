"""CPU side of a run: the archive, matching triplets, checking and conforming them, the report, validation samples."""
