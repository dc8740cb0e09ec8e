"""What is done to a container's root: files in and out, a view of a stopped one,
snapshots and commit, the size-bounded writable layer."""
