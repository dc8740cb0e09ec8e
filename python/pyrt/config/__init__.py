"""What a user asks for, checked once: typed options, sizes, users, mounts."""
