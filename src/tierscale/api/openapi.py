"""The OpenAPI 3.1 description of every route, served at `/api/openapi.json`.

The status bodies' schemas are generated from the typed models in `controller/status_model.py`; the
rest is written next to the handlers it describes. Tests validate the document and check real responses
against its schemas.
"""

from __future__ import annotations

from typing import Any

from tierscale import __version__
from tierscale.controller.host_view import HostRow
from tierscale.controller.status_model import GroupStatus

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


# With `ha:`, every change sent to a standby.
STANDBY_409 = {
    **_error("This controller is an ha standby: the error names the leader, and the header its API address."),
    "headers": {
        "X-Tierscale-Leader": {
            "description": "the leader's API address (host:port)",
            "schema": {"type": "string"},
        }
    },
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
            "409": STANDBY_409,
            "413": _error("Body larger than 64 KiB."),
        },
    }


def _rollout_action(summary: str, description: str) -> dict[str, Any]:
    op = _mutation(summary, description, _ref("Empty"), False)
    op["responses"]["200"] = _json(_ref("RolloutView"), "The group's rollout after the change.")
    op["responses"]["409"] = _error(
        "The action does not apply now (nothing to promote, no earlier revision), or this controller "
        "is an ha standby (header X-Tierscale-Leader: the leader's API address)."
    )
    return op


APPLY = {
    "summary": "Apply a new config",
    "description": "The body is a whole config file (YAML or JSON). It is validated, then taken by the "
    "running controller: bounds, metrics, behavior, health, drain and balancer settings apply at the next "
    "pass, a template change starts a rollout, new groups start, and groups left out stop being managed "
    "(their replicas keep running). Nothing changes when any of it cannot be taken.",
    "security": [{"bearer": []}],
    "requestBody": {
        "required": True,
        "content": {"application/yaml": {"schema": {"type": "string"}}},
    },
    "responses": {
        "200": _json(_ref("ConfigApplied"), "What the config changed."),
        "400": _error("The config is not valid: the error names the file line and field."),
        "401": _error("Missing or wrong bearer token."),
        "403": _error("No token configured on the controller: changes through the API are disabled."),
        "409": _error(
            "Valid, but this controller cannot take it (another controller owns a group, "
            "state_dir or api changed, a group changed tier, a new group's tier cannot be reached)."
        ),
        "413": _error("Body larger than 64 KiB."),
    },
}

SCHEMAS["ConfigApplied"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["applied", "added", "removed", "changed", "rollouts"],
    "properties": {
        "applied": {"type": "boolean"},
        "added": {"type": "array", "items": {"type": "string"}},
        "removed": {"type": "array", "items": {"type": "string"}},
        "changed": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": "group → the top-level keys that changed",
        },
        "rollouts": {"type": "array", "items": {"type": "string"}, "description": "groups now rolling out"},
    },
}


HOST_PARAM = {
    "name": "host",
    "in": "path",
    "required": True,
    "description": "The host's URL as the config names it, percent-encoded, or its host[:port] when that "
    "names one host.",
    "schema": {"type": "string"},
}


def _host_action(summary: str, description: str) -> dict[str, Any]:
    op = _mutation(summary, description, _ref("Empty"), False)
    op["parameters"] = [HOST_PARAM]
    op["responses"]["200"] = _json(_ref("HostRow"), "The host after the change.")
    op["responses"]["404"] = _error("No group places on this host, or the name matches several hosts.")
    return op


def _host_paths() -> dict[str, Any]:
    return {
        "/api/hosts": {
            "get": {
                "summary": "Every host the groups place on: reachable, capacity, replicas, cordon/drain mark",
                "responses": {"200": _json(_ref("HostList"), "Hosts, by name.")},
            }
        },
        "/api/hosts/{host}/cordon": {
            "post": _host_action("Cordon a host", "No new replica is placed on it; its replicas stay.")
        },
        "/api/hosts/{host}/uncordon": {
            "post": _host_action("Uncordon a host", "Ends a cordon or a drain: it takes replicas again.")
        },
        "/api/hosts/{host}/drain": {
            "post": _host_action(
                "Drain a host",
                "Cordons it and moves its replicas to the other hosts one at a time, each replacement "
                "ready before the replica it replaces leaves the balancer.",
            )
        },
    }


def _model_schemas() -> dict[str, Any]:
    """The status bodies' schemas, generated from the models the controller fills."""
    schema = GroupStatus.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    host = HostRow.model_json_schema(ref_template="#/components/schemas/{model}")
    host_list = {
        "type": "object",
        "required": ["hosts"],
        "properties": {"hosts": {"type": "array", "items": _ref("HostRow")}},
    }
    return {**defs, "GroupStatus": schema, "HostRow": host, "HostList": host_list}


SCHEMAS.update(_model_schemas())


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
            "/api/groups/{name}/rollout": {
                "get": {
                    "summary": "The group's rollout",
                    "parameters": [NAME_PARAM],
                    "responses": {
                        "200": _json(_ref("RolloutView"), "Target and previous revision, state, counts."),
                        "404": _error("No such group."),
                    },
                }
            },
            "/api/groups/{name}/rollout/pause": {
                "post": _rollout_action("Pause the rollout", "No more replicas are replaced until resume.")
            },
            "/api/groups/{name}/rollout/resume": {
                "post": _rollout_action(
                    "Resume the rollout", "After a pause or a failure; or retries a rolled-back revision."
                )
            },
            "/api/groups/{name}/rollout/promote": {
                "post": _rollout_action("Promote the canaries", "The rollout goes on past its canaries.")
            },
            "/api/groups/{name}/rollout/undo": {
                "post": _rollout_action("Undo", "Roll back to the revision before the current one.")
            },
            "/api/config": {"post": APPLY},
            **_host_paths(),
        },
    }
