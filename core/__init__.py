"""The server's foundation: app factory, JSON envelope, storage, security and input checks."""
