"""The benchmark against git http-backend under Apache 2: see README.md, "Performance"."""
