"""Fetching files (HTTP and Google Drive, resumable, sha256-checked) and extracting archives safely."""
