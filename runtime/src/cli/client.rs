//! A small HTTP client for the commands that talk to a running `weir run`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::Value;

/// Where the server is, and the admin token.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// URL of the running `weir run` [env: WEIR_SERVER; default: http://127.0.0.1:7070].
    #[arg(long, value_name = "URL", global = true)]
    server: Option<String>,
    /// Admin token, for the endpoints that need one (DLQ redrive and purge)
    /// [env: WEIR_ADMIN_TOKEN].
    #[arg(long, value_name = "TOKEN", global = true)]
    token: Option<String>,
}

pub(crate) struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(args: &ServerArgs) -> Self {
        let base = args
            .server
            .clone()
            .or_else(|| std::env::var("WEIR_SERVER").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "http://127.0.0.1:7070".into());
        let token = args.token.clone().or_else(|| std::env::var("WEIR_ADMIN_TOKEN").ok().filter(|s| !s.is_empty()));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        Self { agent: ureq::Agent::new_with_config(config), base: base.trim_end_matches('/').to_owned(), token }
    }

    fn auth(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        match &self.token {
            Some(t) => request.header("authorization", format!("Bearer {t}")),
            None => request,
        }
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow::anyhow!("cannot reach weir at {}: {e} (is `weir run` running? set --server or WEIR_SERVER)", self.base)
    }

    fn answer(mut response: ureq::http::Response<ureq::Body>) -> anyhow::Result<(u16, Value)> {
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().context("reading the response")?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.agent.get(format!("{}{path}", self.base)).call().map_err(|e| self.unreachable(e))?;
        ok(Self::answer(response)?)
    }

    /// GET; returns (status, body) without treating errors as fatal.
    pub(crate) fn get_raw(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self.agent.get(format!("{}{path}", self.base)).call().map_err(|e| self.unreachable(e))?;
        Self::answer(response)
    }

    /// POST bytes; returns (status, body) without treating errors as fatal.
    pub(crate) fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> anyhow::Result<(u16, Value)> {
        let request = self.auth(self.agent.post(format!("{}{path}", self.base)).header("content-type", content_type));
        let response = request.send(body).map_err(|e| self.unreachable(e))?;
        Self::answer(response)
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        ok(self.post_raw(path, "application/json", body.to_string().as_bytes())?)
    }
}

/// The body of a 2xx answer, or the server's error as an error.
pub(crate) fn ok((status, body): (u16, Value)) -> anyhow::Result<Value> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = body["error"]["message"].as_str().map_or_else(|| body.to_string(), str::to_owned);
    let code = body["error"]["code"].as_str().unwrap_or("error");
    bail!("server answered {status} [{code}]: {message}")
}
