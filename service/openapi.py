"""The OpenAPI 3 document of the HTTP API (served at /openapi.json), written by hand from issue 22."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "401": _json(_ref("Problem"), "missing or wrong bearer token"),
    "404": _json(_ref("Problem"), "unknown call"),
    "409": _json(_ref("Problem"), "Hangup (the call is hung up) or Error (already recording)"),
    "422": _json(_ref("Problem"), "bad arguments: the detail is the Python API's Error text"),
}
CALL_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "wholecall", "version": "1",
                 "description": "Whole-call recording service: calls with RTP endpoints and their recordings."},
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "200 once every worker and the ingest said hello and while they answer",
                                 "responses": {"200": _json(_ref("Health"), "ready"),
                                               "503": _json(_ref("Health"), "starting, draining, or degraded "
                                                            "(status 'degraded', problems: no live worker, a media "
                                                            "process that does not answer)")}}},
            "/v1/calls": {"post": {
                "summary": "Create an answered call with one RTP endpoint per leg",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CallRequest")}}},
                "responses": {"201": _json(_ref("Call"), "created"), **ERRORS,
                              "503": _json(_ref("Problem"), "starting, draining or out of ports/channels")}}},
            "/v1/calls/{id}": {
                "parameters": CALL_ID,
                "get": {"summary": "The call, its recording, digits and media counters",
                        "responses": {"200": _json(_ref("Call"), "the call"), **ERRORS}},
                "delete": {"summary": "Hang up: a running recording ends with HANGUP and a final file",
                           "responses": {"200": _json(_ref("HungUp"), "hung up"), **ERRORS}}},
            "/v1/calls/{id}/recording": {
                "parameters": CALL_ID,
                "post": {"summary": "WholeCallRecorder.start() with the spec's arguments",
                         "requestBody": {"required": True,
                                         "content": {"application/json": {"schema": _ref("StartRequest")}}},
                         "responses": {"201": _json(_ref("Started"), "recording"), **ERRORS,
                                       "500": _json(_ref("Problem"), "the job failed to start (state ERROR)"),
                                       "503": _json(_ref("Problem"), "the service is shutting down")}},
                "get": {"summary": "state/cause; ?wait=S blocks like wait_until_finished(S) (cause TIMEOUT on expiry)",
                        "parameters": [{"name": "wait", "in": "query", "required": False,
                                        "schema": {"type": "number", "minimum": 0}}],
                        "responses": {"200": _json(_ref("Recording"), "the recording"), **ERRORS}},
                "delete": {"summary": "stop(): the recording ends with cause ABORTED",
                           "responses": {"200": _json(_ref("Recording"), "stopped"), **ERRORS,
                                         "504": _json(_ref("Problem"), "the recording did not end within the stop "
                                                                       "timeout; it ends later (ABORTED)")}}},
            "/v1/calls/{id}/recording/pause": {
                "parameters": CALL_ID,
                "post": {"summary": "Extension of the spec: WholeCallRecorder.pause(mode); nothing from now on reaches "
                                    "the file until resume (silence: digital silence of the paused length; skip: nothing)",
                         "requestBody": {"required": False,
                                         "content": {"application/json": {"schema": _ref("PauseRequest")}}},
                         "responses": {"200": _json(_ref("Paused"), "paused (changed false: it already was)"),
                                       **ERRORS}}},
            "/v1/calls/{id}/recording/resume": {
                "parameters": CALL_ID,
                "post": {"summary": "Extension of the spec: WholeCallRecorder.resume(); recording again from now",
                         "responses": {"200": _json(_ref("Paused"), "resumed (changed false: it was not paused)"),
                                       **ERRORS}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/metrics": {"get": {"summary": "Prometheus exposition (also on the operations port, without the token)",
                                 "responses": {"200": {"description": "text/plain; version=0.0.4",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {"type": "object", "required": ["error", "detail"],
                            "properties": {"error": {"type": "string", "example": "Hangup"},
                                           "detail": {"type": "string"}}},
                "Health": {"type": "object", "properties": {"status": {"type": "string"},
                                                            "workers": {"type": "array", "items": {"type": "object"}}}},
                "Sdes": {"type": "object", "required": ["suite", "key"],
                         "properties": {"suite": {"type": "string", "example": "AES_CM_128_HMAC_SHA1_80"},
                                        "key": {"type": "string", "description": "base64(master key || salt)"}}},
                "CallRequest": {"type": "object", "required": ["media"], "properties": {
                    "media": {"type": "string", "enum": ["rtp", "twilio", "websocket", "audiosocket"]},
                    "id": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$",
                           "description": "default: a random one; not . or .."},
                    "channels": {"type": "integer", "enum": [1, 2], "default": 1,
                                 "description": "media websocket: 2 = both legs in one stereo stream"},
                    "encoding": {"type": "string", "enum": ["L16"], "default": "L16", "description": "media websocket"},
                    "rate": {"type": "integer", "enum": [8000, 16000], "default": 8000, "description": "media websocket"},
                    "rtp": {"type": "object", "properties": {
                        "payload_types": {"type": "object", "additionalProperties": {"type": "string"},
                                          "example": {"96": "L16/8000", "101": "telephone-event/8000"}},
                        "srtp": {"type": "object", "properties": {"inbound": _ref("Sdes"), "outbound": _ref("Sdes")}}}}}},
                "Endpoint": {"type": "object", "properties": {"rtp": {"type": "object", "properties": {
                    "host": {"type": "string"}, "port": {"type": "integer"}}}}},
                "Call": {"type": "object", "properties": {
                    "id": {"type": "string"}, "state": {"type": "string", "example": "ANSWERED"},
                    "legs": {"type": "object", "properties": {"inbound": _ref("Endpoint"), "outbound": _ref("Endpoint")}},
                    "recording": _ref("Recording"), "digits": {"type": "string"},
                    "digit_events": {"type": "array", "items": {"type": "object"}},
                    "media": {"type": "object", "description": "per-leg packet counters and kernel drops"},
                    "hangup_reason": {"type": "string", "description": "once hung up: api, media_timeout, stop, ..."},
                    "websocket": {"type": "string", "description": "twilio/websocket media: where to stream"},
                    "websocket_outbound": {"type": "string", "description": "websocket media, 1 channel: the "
                                                                            "outbound leg's stream"},
                    "audiosocket": {"type": "object", "description": "audiosocket media: where to connect", "properties": {
                        "host": {"type": "string"}, "port": {"type": "integer"}, "uuid": {"type": "string"},
                        "uuid_outbound": {"type": "string"}}}}},
                "HungUp": {"type": "object", "properties": {"id": {"type": "string"}, "state": {"type": "string"},
                                                            "recording": _ref("Recording")}},
                "StartRequest": {"type": "object", "required": ["filename"], "properties": {
                    "filename": {"type": "string", "description": "relative to the recordings directory"},
                    "file_format": {"type": "string", "enum": ["alaw", "ulaw", "ima", "oki", "s16bit", "u8bit"]},
                    "rate": {"type": "integer", "enum": [6000, 8000, 11000, 11025]},
                    "max_bytes": {"type": "integer", "minimum": 0},
                    "milliseconds_max_silence": {"type": "integer", "minimum": 0},
                    "milliseconds_initial_silence": {"type": "integer", "minimum": 0},
                    "dtmf_elim": {"type": "boolean"},
                    "recording_mode": {"type": "string", "enum": ["mixed", "separate"]},
                    "cipher": {"type": "object", "nullable": True, "properties": {
                        "key": {"type": "string", "description": "hex AES key"},
                        "iv": {"type": "string", "description": "hex 128-bit IV"}}},
                    "min_seconds": {"type": "number", "minimum": 0, "description": "extension: a recording shorter "
                                    "than this is discarded (file and sidecar removed; the result says discarded)"},
                    "webhook": {"type": "string", "description": "POSTed {call, cause, filename, seconds, bytes, sha256} "
                                                                 "at the end, retried with back-off"}}},
                "PauseRequest": {"type": "object", "properties": {
                    "mode": {"type": "string", "enum": ["silence", "skip"], "default": "silence"}}},
                "Paused": {"type": "object", "properties": {
                    "paused": {"type": "string", "enum": ["", "silence", "skip"], "description": "\"\": recording"},
                    "changed": {"type": "boolean"}}},
                "Started": {"type": "object", "properties": {"state": {"type": "string"}, "filename": {"type": "string"}}},
                "Recording": {"type": "object", "properties": {
                    "state": {"type": "string", "enum": ["IDLE", "RECORDING", "ERROR"]},
                    "cause": {"type": "string",
                              "enum": ["NONE", "SILENCE", "SIZE", "ABORTED", "HANGUP", "TIMEOUT", "ERROR"]},
                    "filename": {"type": "string", "nullable": True},
                    "seconds": {"type": "number"}, "bytes": {"type": "integer"},
                    "paused": {"type": "string", "enum": ["", "silence", "skip"]},
                    "discarded": {"type": "boolean"}, "audio_detected": {"type": "boolean"},
                    "error": {"type": "string", "description": "why it failed (present only then)"},
                    "sidecar": {"type": "string", "nullable": True,
                                "description": "metadata sidecar, relative to the recordings directory"}}},
            },
        },
    }
