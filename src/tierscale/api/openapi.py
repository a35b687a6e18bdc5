"""The OpenAPI 3.1 description of every route, served at `/api/openapi.json`.

Written by hand next to the handlers it describes; tests validate the document and check real
responses against its schemas, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from tierscale import __version__

GROUP_NAME = {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"}
NUM_OR_NULL = {"type": ["number", "null"]}
INT_OR_NULL = {"type": ["integer", "null"]}
STR_OR_NULL = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "Group name, as in the config.",
    "schema": GROUP_NAME,
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "field"],
        "properties": {
            "error": {"type": "string", "description": "One line saying what is wrong."},
            "field": {**STR_OR_NULL, "description": "The body field, parameter or header at fault."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "groups"],
        "properties": {
            "status": {"const": "ok"},
            "version": {"type": "string"},
            "groups": {"type": "integer", "minimum": 0},
        },
    },
    "Replica": {
        "type": "object",
        "required": ["id", "address", "state", "health", "cpu", "rps", "p95_ms", "age"],
        "properties": {
            "id": {"type": "string"},
            "address": {**STR_OR_NULL, "description": "host:port the balancer sends to"},
            "state": {
                "type": "string",
                "description": "ready (in the balancer), starting, draining, unhealthy, provisioning, failed",
            },
            "health": {"type": "string", "description": "ok, pending, or the last probe error"},
            "cpu": {**NUM_OR_NULL, "description": "% of the replica's CPU allotment"},
            "memory_bytes": INT_OR_NULL,
            "rps": {"type": "number", "description": "requests/s through the balancer"},
            "p95_ms": {**NUM_OR_NULL, "description": "p95 upstream response time at the balancer"},
            "age": {"type": "number", "description": "seconds since created"},
        },
    },
    "Proposal": {
        "type": "object",
        "required": ["metric", "value", "target", "replicas"],
        "properties": {
            "metric": {"type": "string"},
            "value": {**NUM_OR_NULL, "description": "measured value; for totals, the group's total"},
            "target": {"type": "number"},
            "replicas": {**INT_OR_NULL, "description": "the count this metric alone asks for"},
            "error": STR_OR_NULL,
        },
    },
    "Decision": {
        "type": "object",
        "required": ["ts", "policy", "current", "desired", "recommended", "limits", "reason", "proposals"],
        "properties": {
            "ts": {"type": "number", "description": "unix time"},
            "policy": {"type": "string", "description": "hpa, threshold or manual"},
            "current": {"type": "integer"},
            "desired": {"type": "integer"},
            "recommended": {"type": "integer"},
            "limits": {
                "type": "array",
                "items": {"type": "string"},
                "description": "what held the count back: tolerance, stabilization, ScaleUpLimit, max, ...",
            },
            "reason": {"type": "string", "description": "one line: why this count"},
            "proposals": {"type": "array", "items": _ref("Proposal")},
        },
    },
    "GroupStatus": {
        "type": "object",
        "required": [
            "group",
            "tier",
            "policy",
            "min",
            "max",
            "desired",
            "current",
            "ready",
            "paused",
            "replicas",
            "last_decision",
        ],
        "properties": {
            "group": {"type": "string"},
            "tier": {"type": "string"},
            "policy": {"type": "string"},
            "min": {"type": "integer"},
            "max": {"type": "integer"},
            "desired": {**INT_OR_NULL, "description": "null until the first pass"},
            "current": {"type": "integer", "description": "replicas that count (not draining, not failed)"},
            "ready": {"type": "integer", "description": "replicas the balancer sends to"},
            "paused": {"type": "boolean"},
            "manual_replicas": {**INT_OR_NULL, "description": "the count held while paused"},
            "dry_run": {"type": "boolean"},
            "sync_period": {"type": "number"},
            "provider_ok": {"type": "boolean"},
            "last_error": STR_OR_NULL,
            "balancer": {
                "type": ["object", "null"],
                "properties": {"url": {"type": "string"}, "backends": {"type": "array"}},
            },
            "rps": NUM_OR_NULL,
            "p95_ms": NUM_OR_NULL,
            "replicas": {"type": "array", "items": _ref("Replica")},
            "last_decision": {"oneOf": [_ref("Decision"), {"type": "null"}]},
        },
    },
    "GroupList": {
        "type": "object",
        "required": ["groups"],
        "properties": {"groups": {"type": "array", "items": _ref("GroupStatus")}},
    },
    "HistoryRow": {
        "type": "object",
        "required": ["ts", "group", "type", "kind", "message"],
        "properties": {
            "ts": {"type": "number"},
            "group": {"type": "string"},
            "type": {"enum": ["event", "decision"]},
            "kind": {"type": "string", "description": "event kind (replica_ready, scaled, ...) or decision"},
            "message": {"type": "string", "description": "the event text, or the decision's reason"},
            "replica": STR_OR_NULL,
            "data": {"type": "object"},
            "policy": {"type": "string"},
            "current": {"type": "integer"},
            "desired": {"type": "integer"},
            "recommended": {"type": "integer"},
            "limits": {"type": "array", "items": {"type": "string"}},
            "proposals": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Events": {
        "type": "object",
        "required": ["events"],
        "properties": {"events": {"type": "array", "items": _ref("HistoryRow")}},
    },
    "Series": {
        "type": "object",
        "description": "Column-wise samples, one per reconcile pass, over the last `window` seconds.",
        "required": [
            "group",
            "now",
            "window",
            "t",
            "desired",
            "current",
            "ready",
            "rps",
            "p95_ms",
            "metrics",
        ],
        "properties": {
            "group": {"type": "string"},
            "now": {"type": "number"},
            "window": {"type": "number"},
            "min": {"type": "integer"},
            "max": {"type": "integer"},
            "t": {"type": "array", "items": {"type": "number"}},
            "desired": {"type": "array", "items": INT_OR_NULL},
            "current": {"type": "array", "items": {"type": "integer"}},
            "ready": {"type": "array", "items": {"type": "integer"}},
            "rps": {"type": "array", "items": NUM_OR_NULL},
            "p95_ms": {"type": "array", "items": NUM_OR_NULL},
            "metrics": {
                "type": "object",
                "description": "per metric: value (per replica, in the target's unit) and target",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "array", "items": NUM_OR_NULL},
                        "target": {"type": "array", "items": NUM_OR_NULL},
                    },
                },
            },
            "provision": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["t", "seconds"],
                    "properties": {
                        "t": {"type": "number"},
                        "seconds": {"type": "number"},
                        "replica": STR_OR_NULL,
                    },
                },
            },
        },
    },
    "ScaleRequest": {
        "type": "object",
        "required": ["replicas"],
        "additionalProperties": False,
        "properties": {
            "replicas": {
                "type": "integer",
                "minimum": 0,
                "description": "must lie within the group's min..max",
            }
        },
    },
    "Empty": {"type": "object", "additionalProperties": False, "maxProperties": 0},
}

SINCE_PARAM = {
    "name": "since",
    "in": "query",
    "required": False,
    "description": "A duration back from now (`10m`, `1h30m`, `500ms`) or a unix timestamp (`1767225600.5`).",
    "schema": {"type": "string"},
}


def _mutation(summary: str, description: str, body: dict[str, Any], required: bool) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": description,
        "security": [{"bearer": []}],
        "parameters": [NAME_PARAM],
        "requestBody": {"required": required, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": _json(_ref("GroupStatus"), "The group after the change."),
            "400": _error("Bad body: the error names the field."),
            "401": _error("Missing or wrong bearer token."),
            "403": _error("No token configured on the controller: changes through the API are disabled."),
            "404": _error("No such group."),
            "413": _error("Body larger than 64 KiB."),
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tierscale",
            "version": __version__,
            "description": "Status, history, metrics and manual control of a running tierscale controller.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The value of the environment variable named by `api.token_env`.",
                }
            },
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _json(_ref("Health"), "The controller is running.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text exposition format)",
                    "responses": {
                        "200": {
                            "description": "Metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "The live dashboard",
                    "responses": {
                        "200": {
                            "description": "HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/static/{file}": {
                "get": {
                    "summary": "A file of the dashboard",
                    "parameters": [
                        {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "The file",
                            "content": {"*/*": {"schema": {"type": "string"}}},
                        },
                        "404": _error("No such file."),
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
                }
            },
            "/api/groups": {
                "get": {
                    "summary": "Every group's status",
                    "responses": {"200": _json(_ref("GroupList"), "All groups of the running config.")},
                }
            },
            "/api/groups/{name}": {
                "get": {
                    "summary": "One group: replicas, desired count, last decision with its reason and limits",
                    "parameters": [NAME_PARAM],
                    "responses": {
                        "200": _json(_ref("GroupStatus"), "The group's status."),
                        "404": _error("No such group."),
                    },
                }
            },
            "/api/groups/{name}/series": {
                "get": {
                    "summary": "The last 15 minutes of the group's counts and metrics (what the charts draw)",
                    "parameters": [NAME_PARAM, SINCE_PARAM],
                    "responses": {
                        "200": _json(_ref("Series"), "Samples, oldest first."),
                        "400": _error("Bad `since`."),
                        "404": _error("No such group."),
                    },
                }
            },
            "/api/events": {
                "get": {
                    "summary": "Decisions that changed the count, and replica/balancer events, oldest first",
                    "parameters": [
                        {
                            "name": "group",
                            "in": "query",
                            "required": False,
                            "description": "Only this group.",
                            "schema": {"type": "string"},
                        },
                        SINCE_PARAM,
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "description": "The newest this many rows (default 200).",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 5000},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("Events"), "History rows."),
                        "400": _error("Bad `since` or `limit`."),
                        "404": _error("No such group."),
                    },
                }
            },
            "/api/groups/{name}/scale": {
                "post": _mutation(
                    "Set the count by hand",
                    "Sets the desired count and pauses the group's policy until `resume`.",
                    _ref("ScaleRequest"),
                    True,
                )
            },
            "/api/groups/{name}/pause": {
                "post": _mutation(
                    "Pause the policy",
                    "Holds the current desired count; replicas that fail are still replaced.",
                    _ref("Empty"),
                    False,
                )
            },
            "/api/groups/{name}/resume": {
                "post": _mutation(
                    "Hand the group back to its policy",
                    "Ends a pause or a manual scale.",
                    _ref("Empty"),
                    False,
                )
            },
        },
    }
