//! A blocking client of the control API, for the `weft` command line
//! (`weft submit`, `weft jobs`, `weft cancel`, `weft regulate`,
//! `weft audience`, `weft shutdown`) and for tests.
//!
//! Every call returns the server's JSON answer, or an error that carries
//! the server's `{"error": …}` message and status.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::blocking::{Client as Http, RequestBuilder};
use reqwest::Method;
use serde_json::Value;

use crate::runtime::JobId;

/// A control API client.
pub struct Client {
    base: String,
    token: Option<String>,
    http: Http,
}

impl Client {
    /// A client of the server at `server` (`http://host:port`), sending
    /// `token` as a bearer token when given.
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Client> {
        let http = Http::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Client {
            base: server.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.authorized(self.http.request(method, format!("{}{path}", self.base)))
    }

    fn authorized(&self, r: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn send(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .with_context(|| format!("cannot reach the Weft server at {}", self.base))?;
        let status = response.status();
        let body = response.text().unwrap_or_default();
        let json: Option<Value> = serde_json::from_str(&body).ok();
        if status.is_success() {
            return Ok(json.unwrap_or(Value::Null));
        }
        let message = json
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .map(str::to_string)
            .unwrap_or(body);
        anyhow::bail!("the server answered {status}: {message}")
    }

    /// Submits a job spec (TOML); relative paths in it resolve against `dir`
    /// on the server (default: the server's working directory).
    pub fn submit(&self, spec_toml: &str, dir: Option<&Path>) -> anyhow::Result<Value> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/jobs", self.base))
            .with_context(|| format!("bad server address {}", self.base))?;
        if let Some(d) = dir {
            url.query_pairs_mut()
                .append_pair("dir", &d.to_string_lossy());
        }
        let r = self
            .authorized(self.http.request(Method::POST, url))
            .header("content-type", "application/toml")
            .body(spec_toml.to_string());
        self.send(r)
    }

    /// Every job.
    pub fn jobs(&self) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, "/v1/jobs"))
    }

    /// One job.
    pub fn job(&self, id: JobId) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, &format!("/v1/jobs/{id}")))
    }

    /// Drops a job (it drains and finishes).
    pub fn cancel(&self, id: JobId) -> anyhow::Result<Value> {
        self.send(self.request(Method::DELETE, &format!("/v1/jobs/{id}")))
    }

    /// Applies a regulation (one JSON object) to a running job.
    pub fn regulate(&self, id: JobId, regulation_json: &str) -> anyhow::Result<Value> {
        self.send(
            self.request(Method::POST, &format!("/v1/jobs/{id}/regulations"))
                .header("content-type", "application/json")
                .body(regulation_json.to_string()),
        )
    }

    /// Adds or replaces an audience (or computed trait) of a running job;
    /// `definition` is the JSON the Profile API's audience endpoint takes.
    pub fn audience_add(&self, id: JobId, definition: &Value) -> anyhow::Result<Value> {
        self.send(
            self.request(Method::POST, &format!("/v1/jobs/{id}/audiences"))
                .json(definition),
        )
    }

    /// Drops an audience (or computed trait) of a running job.
    pub fn audience_drop(&self, id: JobId, name: &str) -> anyhow::Result<Value> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/jobs/{id}/audiences/", self.base))
            .with_context(|| format!("bad server address {}", self.base))?;
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("bad server address {}", self.base))?
            .pop_if_empty()
            .push(name);
        self.send(self.authorized(self.http.request(Method::DELETE, url)))
    }

    /// Shuts the cluster down (every job drains first).
    pub fn shutdown(&self) -> anyhow::Result<Value> {
        self.send(self.request(Method::POST, "/v1/shutdown"))
    }
}
