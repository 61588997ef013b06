"""The git:// protocol, as git daemon speaks it: anonymous fetch."""
