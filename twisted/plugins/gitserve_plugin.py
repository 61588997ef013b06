"""The twistd plugin: `twistd gitserve` builds its service in gitserve.tap, imported lazily."""

from twisted.application.service import ServiceMaker

gitserve = ServiceMaker(
    "gitserve",
    "gitserve.tap",
    "Serve the git repositories under a directory over smart and dumb HTTP(S).",
    "gitserve",
)
