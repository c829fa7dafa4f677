//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`.
//!
//! Written out here rather than derived: the API is small, and the test below fails when a
//! route exists that the document does not describe (or the other way round).

use serde_json::{json, Value};

fn err_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
        "409": {"$ref": "#/components/responses/Error"},
        "503": {"$ref": "#/components/responses/Error"}
    })
}

fn ok(schema: &str, status: &str) -> Value {
    let mut r = err_responses();
    r[status] = json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    r
}

fn name_param() -> Value {
    json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}, "description": "VM name"})
}

pub(crate) fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Pitwall API", "version": "v1", "description": "Lightweight VMs from OCI images. Errors are {\"error\": {\"code\", \"message\"}}."},
        "paths": {
            "/healthz": {"get": {"summary": "Liveness and the hosts heard from", "responses": ok("Health", "200")}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI document"}}}},
            "/v1/vms": {
                "post": {"summary": "Create a VM (boots it unless start=false)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateVmRequest"}}}},
                    "responses": ok("Vm", "201")},
                "get": {"summary": "List VMs", "responses": ok("VmList", "200")}
            },
            "/v1/vms/{name}": {
                "parameters": [name_param()],
                "get": {"summary": "Show a VM", "responses": ok("Vm", "200")},
                "delete": {"summary": "Delete a VM (stops it first)", "responses": ok("Vm", "202")}
            },
            "/v1/vms/{name}/start": {"parameters": [name_param()], "post": {"summary": "Start a VM", "responses": ok("Vm", "202")}},
            "/v1/vms/{name}/stop": {"parameters": [name_param()], "post": {"summary": "Stop a VM (clean guest shutdown, then kill after a grace period)", "responses": ok("Vm", "202")}},
            "/v1/vms/{name}/wait": {
                "parameters": [name_param(),
                    {"name": "state", "in": "query", "required": true, "schema": {"$ref": "#/components/schemas/VmState"}},
                    {"name": "timeout", "in": "query", "required": false, "schema": {"type": "string", "examples": ["60s", "500ms", "2m"]}}],
                "get": {"summary": "Wait until the VM is in a state; 408 timeout, 409 vm_failed", "responses": ok("Vm", "200")}
            },
            "/v1/vms/{name}/console": {
                "parameters": [name_param(), {"name": "max_bytes", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 4194304}}],
                "get": {"summary": "Tail of the captured serial console", "responses": {"200": {"description": "console bytes", "content": {"text/plain": {}}}}}
            },
            "/v1/events": {
                "parameters": [{"name": "after", "in": "query", "required": false, "schema": {"type": "integer"}}],
                "get": {"summary": "Lifecycle events as server-sent events (event `state`, id = seq, data = Event); Last-Event-ID resumes", "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}}}}
            },
            "/v1/images": {
                "post": {"summary": "Import an image archive (OCI layout tar or docker save tar) as the request body",
                    "parameters": [{"name": "reference", "in": "query", "required": true, "schema": {"type": "string"}, "description": "NAME:TAG to register it under"}],
                    "requestBody": {"required": true, "content": {"application/x-tar": {}}},
                    "responses": ok("Image", "201")},
                "get": {"summary": "List images", "responses": ok("ImageList", "200")}
            },
            "/v1/images/{reference}": {
                "parameters": [{"name": "reference", "in": "path", "required": true, "schema": {"type": "string"}, "description": "NAME:TAG, slashes allowed"}],
                "get": {"summary": "Show an image", "responses": ok("Image", "200")}
            }
        },
        "components": {
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "VmState": {"type": "string", "enum": ["PENDING","CREATING","STARTING","RUNNING","STOPPING","STOPPED","DELETING","DELETED","FAILED","LOST"]},
                "CreateVmRequest": {"type": "object", "required": ["name", "image"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"},
                    "image": {"type": "string"},
                    "vcpus": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1},
                    "memory_mib": {"type": "integer", "minimum": 64, "maximum": 131072, "default": 256},
                    "disk_mib": {"type": "integer", "minimum": 16, "maximum": 1048576, "default": 1024},
                    "start": {"type": "boolean", "default": true}}},
                "Vm": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "image": {"type": "string"},
                    "vcpus": {"type": "integer"}, "memory_mib": {"type": "integer"}, "disk_mib": {"type": "integer"},
                    "state": {"$ref": "#/components/schemas/VmState"},
                    "desired_state": {"type": "string", "enum": ["RUNNING", "STOPPED", "DELETED"]},
                    "generation": {"type": "integer"}, "owner": {"type": "string"},
                    "host": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
                    "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}},
                "VmList": {"type": "object", "properties": {"vms": {"type": "array", "items": {"$ref": "#/components/schemas/Vm"}}}},
                "Image": {"type": "object", "properties": {
                    "reference": {"type": "string"}, "digest": {"type": "string"}, "size_bytes": {"type": "integer"},
                    "config": {"type": "object"}, "host": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}}},
                "ImageList": {"type": "object", "properties": {"images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}}}},
                "Event": {"type": "object", "properties": {
                    "seq": {"type": "integer"}, "vm_id": {"type": "string"}, "vm_name": {"type": "string"},
                    "state": {"$ref": "#/components/schemas/VmState"}, "generation": {"type": "integer"},
                    "reason": {"type": ["string", "null"]}, "at": {"type": "string", "format": "date-time"}}},
                "Health": {"type": "object", "properties": {"status": {"type": "string"}, "version": {"type": "string"}, "hosts": {"type": "array", "items": {"type": "string"}}}},
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string", "enum": ["invalid_argument","not_found","already_exists","conflict","timeout","vm_failed","invalid_image","unavailable","internal","method_not_allowed"]},
                    "message": {"type": "string"}}}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    /// Every route the router serves, as written in `api::router`.
    const ROUTES: &[(&str, &[&str])] = &[
        ("/healthz", &["get"]),
        ("/v1/openapi.json", &["get"]),
        ("/v1/vms", &["post", "get"]),
        ("/v1/vms/{name}", &["get", "delete"]),
        ("/v1/vms/{name}/start", &["post"]),
        ("/v1/vms/{name}/stop", &["post"]),
        ("/v1/vms/{name}/wait", &["get"]),
        ("/v1/vms/{name}/console", &["get"]),
        ("/v1/events", &["get"]),
        ("/v1/images", &["post", "get"]),
        ("/v1/images/{reference}", &["get"]),
    ];

    #[test]
    fn document_describes_exactly_the_routes() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), ROUTES.len(), "document and routes differ");
        for (path, methods) in ROUTES {
            let p = paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} missing from the document"));
            for m in *methods {
                assert!(p.get(*m).is_some(), "{m} {path} missing from the document");
            }
        }
        // and the router source names the same paths
        let src = include_str!("api.rs");
        for (path, _) in ROUTES {
            let route = path.replace("{reference}", "{*reference}");
            assert!(
                src.contains(&format!("\"{route}\"")),
                "{route} not routed in api.rs"
            );
        }
    }
}
