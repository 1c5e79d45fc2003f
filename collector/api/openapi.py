"""The OpenAPI 3.1 document of the API, built from the route table and ``params.PARAMS``.

Served at /v1/openapi.json and kept byte-identical in docs/openapi.json
(``python -m collector.api.openapi > docs/openapi.json``; a test compares them).
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Any

from collector.access.principals import ROLES
from collector.api.params import PARAMS
from collector.api.routes import ROUTES
from collector.records.corrections import FIELDS, REASONS
from wire.bodies_people import EMPLOYEE_ID_RE
from wire.fields import CREDENTIAL_RE, DEVICE_ID_RE
from wire.punch import ACTIONS

VERSION = "1.0.0"
_INT = {"type": "integer"}
_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_NINT = {"type": ["integer", "null"]}
_OBJ = {"type": "object"}
_SCOPE = {"employee": {"type": ["string", "null"], "maxLength": 64,
                       "description": "the person (people directory id) the principal is"},
          "sites": {"type": ["array", "null"], "items": _STR, "minItems": 1, "maxItems": 100,
                    "description": "sites every role is limited to (null: every site)"}}


def _obj(props: dict[str, Any], required: list[str] | None = None, *,
         extra: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        d["required"] = required
    if not extra:
        d["additionalProperties"] = False
    return d


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: dict[str, Any] = {
    "Object": _OBJ,
    "Health": _obj({"status": {"const": "ok"}}, ["status"]),
    "Problem": _obj({"type": _STR, "title": _STR, "status": _INT, "detail": _STR,
                     "instance": _STR, "request_id": _STR},
                    ["type", "title", "status", "detail"]),
    "Applied": _obj({"value": {"type": ["string", "integer"]}, "correction_idx": _INT,
                     "proposal": _STR}),
    "Punch": _obj({
        "device": _STR, "site": _STR, "seq": _INT, "credential": _STR,
        "action": {"enum": sorted(ACTIONS)}, "device_time": _STR, "device_time_us": _INT,
        "clock": _STR, "recorded_at": _STR, "recorded_at_us": _INT, "ledger_idx": _INT,
        "entry_hash": _STR, "reader": _STR, "key": _STR,
        "employee_id": {"type": ["string", "null"],
                        "description": "who held the badge at device time (people directory, "
                                       "resolved when read); null unless badge_status is "
                                       "assigned"},
        "badge_status": {"enum": ["assigned", "unknown", "blocked", "lost"]},
        "corrections": {"type": "object", "additionalProperties": _ref("Applied")},
        "effective": _obj({"action": _STR, "device_time": _STR, "device_time_us": _INT})},
        ["device", "seq", "action", "device_time_us", "ledger_idx", "effective"]),
    "PunchPage": _obj({"items": {"type": "array", "items": _ref("Punch")},
                       "next": _NSTR}, ["items", "next"]),
    "PunchDetail": _obj({"punch": _ref("Punch"), "signed": {"type": ["object", "null"]},
                         "punch_hash": _STR, "entry": _OBJ,
                         "key": {"type": ["object", "null"]},
                         "checkpoint": {"type": ["object", "null"]},
                         "corrections": {"type": "array", "items": _ref("Correction")}}),
    "PayrollStream": {"type": "string",
                      "description": "NDJSON: {header} line, one Punch per line, {trailer} "
                                     "line; CSV: '# ' header/trailer lines and columns"},
    "Correction": _obj({
        "id": _STR, "device": _STR, "seq": _INT, "original_idx": _INT,
        "field": {"enum": list(FIELDS)}, "before": {"type": ["string", "integer"]},
        "after": {"type": ["string", "integer"]}, "reason": {"enum": list(REASONS)},
        "note": _STR, "editor": _STR, "proposed_at": _INT,
        "status": {"enum": ["proposed", "approved", "rejected"]}, "approver": _NSTR,
        "decided_at": _NINT, "decision_note": _NSTR, "correction_idx": _NINT}),
    "CorrectionPage": _obj({"items": {"type": "array", "items": _ref("Correction")},
                            "next": _NSTR, "reasons": _OBJ}),
    "CorrectionProposal": _obj({
        "device": {"type": "string", "pattern": DEVICE_ID_RE.pattern},
        "seq": {"type": "integer", "minimum": 1, "maximum": 2**53 - 1},
        "field": {"enum": list(FIELDS)},
        "after": {"oneOf": [{"enum": sorted(ACTIONS)},
                            {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}],
                  "description": "new action, or new device time in µs (per field)"},
        "before": {"type": ["string", "integer"],
                   "description": "optional: the value you saw (409 if it changed)"},
        "reason": {"enum": list(REASONS)},
        "note": {"type": "string", "maxLength": 500}},
        ["device", "seq", "field", "after", "reason"], extra=False),
    "Decision": _obj({"note": {"type": "string", "maxLength": 500}}, extra=False),
    "TokenRequest": _obj({
        "principal": {"type": "string", "maxLength": 64},
        "roles": {"type": "array", "items": {"enum": list(ROLES)}, "maxItems": 10},
        "expires_days": {"type": "integer", "minimum": 1, "maximum": 365}},
        [], extra=False),
    "PrincipalRequest": _obj({
        "principal": {"type": "string", "maxLength": 64},
        "kind": {"enum": ["token", "cert"]},
        "roles": {"type": "array", "items": {"enum": list(ROLES)}, "maxItems": 10},
        **_SCOPE}, ["principal", "roles"], extra=False),
    "IssuedToken": _obj({"token": _STR, "id": _STR, "principal": _STR, "expires_at": _INT,
                         "status": _STR}, ["token", "id"]),
    "Roles": _obj({"roles": {"type": "array", "items": {"enum": list(ROLES)},
                             "maxItems": 10}, **_SCOPE}, ["roles"], extra=False),
    "ItemList": _obj({"items": {"type": "array", "items": _OBJ}}, ["items"]),
    "Alert": _obj({
        "idx": _INT, "at": _INT, "alert": _STR, "severity": _INT, "device": _NSTR,
        "detail": _STR, "principal": _STR,
        "status": {"enum": ["open", "acknowledged", "resolved"]},
        "acknowledged": {"type": ["object", "null"]}, "resolved": {"type": ["object", "null"]}},
        ["idx", "alert", "status"]),
    "AlertList": _obj({"items": {"type": "array", "items": _ref("Alert")}}, ["items"]),
    "ReviewNote": _obj({"note": {"type": "string", "minLength": 1, "maxLength": 1000}},
                       ["note"], extra=False),
    "DueReview": _obj({"review": {"enum": ["daily-alerts", "access-sample"]},
                       "period": _STR, "from": _INT, "until": _INT, "overdue_at": _INT,
                       "status": {"enum": ["due", "overdue"]}},
                      ["review", "period", "from", "until", "overdue_at", "status"]),
    "DueReviewList": _obj({"items": {"type": "array", "items": _ref("DueReview")}},
                          ["items"]),
    "SignOffRequest": _obj({"note": {"type": "string", "minLength": 1, "maxLength": 1000},
                            "period": {"type": "string", "pattern":
                                       "^[0-9]{4}-([0-9]{2}-[0-9]{2}|W[0-9]{2})$"}},
                           ["note"], extra=False),
    "SignOff": _obj({"idx": _INT, "event": {"enum": ["sign-off"]}, "review": _STR,
                     "period": _STR, "from": _INT, "until": _INT, "by": _STR, "note": _STR,
                     "alerts": _INT, "unresolved": {"type": "array", "items": _INT},
                     "sampled": {"type": "array", "items": _INT}, "population": _INT},
                    ["idx", "review", "period", "by"]),
    "EntryPage": _obj({"items": {"type": "array", "items": _OBJ}, "next_after": _NINT},
                      ["items"]),
    "Verification": _obj({"ok": {"type": "boolean"}, "size": _INT, "resumed_from": _INT,
                          "entries_checked": _INT, "first_failure": {
                              "type": ["object", "null"]},
                          "findings": {"type": "array", "items": _OBJ}}, ["ok"]),
    "InclusionProof": _obj({"leaf_index": _INT, "tree_size": _INT,
                            "inclusion_path": {"type": "array", "items": _STR}},
                           ["leaf_index", "tree_size", "inclusion_path"], extra=False),
    "ConsistencyProof": _obj({"tree_size_1": _INT, "tree_size_2": _INT,
                              "consistency_path": {"type": "array", "items": _STR}},
                             ["tree_size_1", "tree_size_2", "consistency_path"], extra=False),
    "CheckpointNote": _obj({"note": {"type": "string", "description": "C2SP signed note: "
                                     "origin, size, base64 root, blank line, the log's "
                                     "signature and every cosignature line"}}, ["note"]),
    "PunchProof": _obj({"entry": _OBJ, "punch_hash": _STR, "leaf_index": _INT,
                        "inclusion_proof": _ref("InclusionProof"),
                        "checkpoint": {"type": "string",
                                       "description": "the v2 checkpoint note the proof "
                                                      "leads to (size = tree_size)"}},
                       ["entry", "leaf_index", "inclusion_proof", "checkpoint"]),
    "Employee": _obj({
        "employee_id": _STR, "name": _STR, "department": _STR, "site": _STR,
        "timezone": {"type": "string", "description": "IANA time zone"},
        "manager_id": _NSTR, "status": {"enum": ["active", "left"]}, "active_from": _STR,
        "left_on": _NSTR, "created_idx": _INT, "changed_idx": _INT,
        "badges": {"type": "array", "items": _ref("BadgePeriod")},
        "recorded_idx": {"type": ["integer", "null"],
                         "description": "PUT: the employee entry recorded (null: unchanged)"}},
        ["employee_id", "name", "timezone", "status"]),
    "EmployeePage": _obj({"items": {"type": "array", "items": _ref("Employee")},
                          "next": _NSTR}, ["items", "next"]),
    "EmployeeRecord": _obj({
        "name": {"type": "string", "maxLength": 200}, "department": {"type": "string",
                                                                     "maxLength": 128},
        "site": {"type": "string", "maxLength": 128},
        "timezone": {"type": "string", "description": "IANA time zone, e.g. Europe/Berlin"},
        "manager_id": _NSTR, "status": {"enum": ["active", "left"]},
        "active_from": {"type": "string", "format": "date"},
        "left_on": {"type": ["string", "null"], "format": "date"}},
        ["name", "department", "site", "timezone"], extra=False),
    "BadgePeriod": _obj({"credential": _STR, "employee_id": _NSTR,
                         "status": {"enum": ["assigned", "lost", "blocked"]},
                         "valid_from": _INT, "valid_until": _NINT, "idx": _INT,
                         "changed_idx": _INT}),
    "Badge": _obj({"credential": _STR, "at": _INT, "employee_id": _NSTR,
                   "badge_status": {"enum": ["assigned", "lost", "blocked", "unknown"]},
                   "recorded_idx": _NINT,
                   "periods": {"type": "array", "items": _ref("BadgePeriod")}},
                  ["credential", "periods"]),
    "BadgeEventRequest": _obj({
        "event": {"enum": ["assigned", "lost", "blocked", "returned"]},
        "employee_id": _NSTR,
        "from": {"type": ["integer", "string"], "description": "device time (µs or ISO 8601 "
                                                               "with offset); default now"},
        "until": {"type": ["integer", "string", "null"],
                  "description": "exclusive end; not for returned"}},
        ["event"], extra=False),
    "AccessReview": _obj({"unused_days": _INT, "flagged": _INT,
                          "items": {"type": "array", "items": _OBJ}}, ["items"]),
}

_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "device": {"type": "string", "pattern": DEVICE_ID_RE.pattern},
    "seq": {"type": "integer", "minimum": 1},
    "id": {"type": "string", "maxLength": 40},
    "name": {"type": "string", "maxLength": 64},
    "employee_id": {"type": "string", "pattern": EMPLOYEE_ID_RE.pattern},
    "credential": {"type": "string", "pattern": CREDENTIAL_RE.pattern},
    "kind": {"enum": ["daily-alerts", "access-sample"]},
}


def _problem(desc: str) -> dict[str, Any]:
    return {"description": desc,
            "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _operation(r: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": r.name, "summary": r.summary}
    parameters = [{"name": n, "in": "path", "required": True, "schema": s}
                  for n, s in _PATH_PARAMS.items() if "{" + n + "}" in r.path]
    parameters += [{"name": n, "in": "query", "required": False, "schema": PARAMS[n][0],
                    "description": PARAMS[n][1]} for n in r.params]
    if parameters:
        op["parameters"] = parameters
    if r.body is not None:
        op["requestBody"] = {"required": r.body != "Decision", "content": {
            "application/json": {"schema": _ref(r.body)}}}
    content: dict[str, Any] = {"application/json": {"schema": _ref(r.response)}}
    if r.streams:
        content = {"application/x-ndjson": {"schema": {"type": "string"}},
                   "text/csv": {"schema": {"type": "string"}}}
        if r.name == "listPunches":
            content["application/json"] = {"schema": _ref(r.response)}
    responses: dict[str, Any] = {str(r.status): {"description": "OK", "content": content},
                                 "400": _problem("malformed query or body"),
                                 "503": _problem("ledger unavailable")}
    if r.roles is None:
        op["security"] = []
    else:
        op["x-roles"] = list(r.roles)
        op["description"] = f"Roles: {', '.join(r.roles)}."
        responses.update({"401": _problem("no or invalid credentials"),
                          "403": _problem("role missing or segregation of duties"),
                          "429": _problem("too many failed authentications")})
    if "{" in r.path:
        responses["404"] = _problem("not found")
    if r.method == "POST" and ("corrections" in r.path or "badges" in r.path):
        responses["409"] = _problem("conflict with the current state")
    op["responses"] = dict(sorted(responses.items()))
    return op


@cache
def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {"title": "timeclock collector API", "version": VERSION,
                 "description": "HR, payroll and auditor access to the tamper-evident "
                                "attendance ledger. Every request is recorded as an access "
                                "ledger entry. Errors are RFC 9457 problem documents. "
                                "Roles: " + "; ".join(f"{k}: {v}" for k, v in ROLES.items())},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"clientCertificate": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "token from `timeclock-collector token create`"},
                "clientCertificate": {"type": "mutualTLS",
                                      "description": "client certificate of the timeclock "
                                                     "CA; CN = a registered principal"}}},
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
