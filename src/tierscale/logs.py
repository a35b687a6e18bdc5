"""Structured logs: `--log-format json` writes one JSON object per line.

Controller events carry `group`, `event` (the event kind, e.g. `scaled`), `replica` and `data` as
fields, so a count change reads as
`{"msg": "web: scale up 1 → 3: cpu 140% of 60% ...", "group": "web", "event": "scaled",
  "data": {"current": 1, "desired": 3, "reason": "..."}}` and can be filtered without parsing text.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# Attributes a `log.info(..., extra={...})` call may attach that belong in the JSON line.
EXTRA_FIELDS = ("group", "event", "replica", "data")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                body[name] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False, default=str)
