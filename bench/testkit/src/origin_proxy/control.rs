//! A client of the origin proxy's control API (`/__proxy/`): fault settings, counts and records.

use std::net::SocketAddr;

use crate::raw_client::Req;

/// The control API of an origin proxy at `addr`. Its calls panic when the proxy does not answer 200.
#[derive(Clone, Copy, Debug)]
pub struct ProxyControl {
    pub addr: SocketAddr,
}

impl ProxyControl {
    /// `method path` with a JSON `body`; the proxy's JSON answer.
    #[track_caller]
    pub fn call(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let resp = Req::unsigned(method, self.addr, path)
            .body(body.as_bytes().to_vec())
            .send(self.addr)
            .unwrap_or_else(|e| panic!("proxy {method} {path}: {e}"));
        let text = resp.text();
        assert_eq!(resp.status, 200, "proxy {method} {path} {body}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("proxy {path}: {e}: {text}"))
    }

    /// Replaces the fault settings (absent fields take their command-line values).
    #[track_caller]
    pub fn faults(&self, json: &str) {
        self.call("PUT", "/__proxy/faults", json);
    }

    /// Changes only the given fault settings.
    #[track_caller]
    pub fn patch(&self, json: &str) {
        self.call("PATCH", "/__proxy/faults", json);
    }

    /// Forgets the records and counts so far.
    #[track_caller]
    pub fn reset(&self) {
        self.call("POST", "/__proxy/reset", "");
    }

    /// `"METHOD key"` → requests that reached the upstream.
    #[track_caller]
    pub fn counts(&self) -> serde_json::Map<String, serde_json::Value> {
        match self.call("GET", "/__proxy/counts", "") {
            serde_json::Value::Object(m) => m,
            other => panic!("counts: {other}"),
        }
    }

    /// How many `method` requests for `key` reached the upstream.
    #[track_caller]
    pub fn count(&self, method: &str, key: &str) -> u64 {
        self.counts()
            .get(&format!("{method} {key}"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    /// The proxy's records in order.
    #[track_caller]
    pub fn log(&self) -> Vec<serde_json::Value> {
        match self.call("GET", "/__proxy/log", "") {
            serde_json::Value::Array(a) => a,
            other => panic!("log: {other}"),
        }
    }

    /// The records of requests for `key`, as (method, status, injected kind).
    #[track_caller]
    pub fn records_for(&self, key: &str) -> Vec<(String, u64, Option<String>)> {
        self.log()
            .into_iter()
            .filter(|r| r["key"] == key)
            .map(|r| {
                (
                    r["method"].as_str().unwrap_or("").to_owned(),
                    r["status"].as_u64().unwrap_or(0),
                    r["injected"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }
}
