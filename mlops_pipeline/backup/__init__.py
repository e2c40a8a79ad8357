"""Backup and restore of the stack's state: every volume that holds something a team would miss, in one archive
(`make backup`, `make restore`; docs/backup.md). Runs in a one-shot container (the compose service `backup`)
that mounts each state volume at STATE_ROOT/<volume>; scripts/backup.py drives it from the host.

An archive is a gzip'd tar: each volume's files under the volume's name, then manifest.json, written last, once
every checksum is known. gzip's CRC covers every byte and the manifest has a SHA-256 per file, so a flipped byte
or a cut archive is refused before anything is touched. SQLite databases are copied with SQLite's online backup
API (a consistent snapshot while Airflow and MLflow write to them), then checked with PRAGMA integrity_check.
The inference log's JSON Lines are cut after their last complete line.

A restore extracts everything into a staging directory inside each volume and checks it against the manifest;
only then does it swap each volume's entries for the staged ones (renames within one file system), and it
rolls back if a swap fails. A failed restore leaves the state as it was.
"""
