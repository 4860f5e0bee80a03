"""Data access shared by every task: downloads (checksum, resume, safe extraction)."""
