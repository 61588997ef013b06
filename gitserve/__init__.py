"""gitserve: a Twisted git server for smart and dumb HTTP(S)."""
