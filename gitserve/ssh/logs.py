"""
Conch's own log lines, kept to warnings and errors.

twisted.conch logs a dozen debug and info lines per connection (key
exchange, each auth attempt, each channel request): at the daemon's volume
they would drown the one line per git operation that matters. gitserve's
SSH classes log through this logger instead; their own events (refusals, the
host key, the keydir) go through gitserve's loggers as usual.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

conchLog = Logger(
    observer=FilteringLogObserver(
        globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
    )
)
