//! A small HTTP client for the commands that talk to a running `weir run`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_runtime::models::{ErrorInfo, ErrorResponse};

/// Where the server is, and the token.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// URL of the running `weir run` [env: WEIR_SERVER; default: http://127.0.0.1:7070].
    #[arg(long, value_name = "URL", global = true)]
    server: Option<String>,
    /// API token, sent with every request: on loopback the admin actions
    /// need one when the server has tokens; off loopback every endpoint but
    /// /health and /ready does [env: WEIR_TOKEN, else WEIR_ADMIN_TOKEN].
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
        let env = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
        let token = args.token.clone().or_else(|| env("WEIR_TOKEN")).or_else(|| env("WEIR_ADMIN_TOKEN"));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        Self { agent: ureq::Agent::new_with_config(config), base: base.trim_end_matches('/').to_owned(), token }
    }

    fn auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => request.header("authorization", format!("Bearer {t}")),
            None => request,
        }
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow::anyhow!("cannot reach weir at {}: {e} (is `weir run` running? set --server or WEIR_SERVER)", self.base)
    }

    fn answer(mut response: ureq::http::Response<ureq::Body>) -> anyhow::Result<Answer> {
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().context("reading the response")?;
        Ok(Answer { status, text })
    }

    /// GET, the answer as `T`; an error answer is an error.
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get_raw(path)?.into_ok()
    }

    /// GET; the answer whatever its status.
    pub(crate) fn get_raw(&self, path: &str) -> anyhow::Result<Answer> {
        let response =
            self.auth(self.agent.get(format!("{}{path}", self.base))).call().map_err(|e| self.unreachable(e))?;
        Self::answer(response)
    }

    /// POST bytes; the answer whatever its status.
    pub(crate) fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> anyhow::Result<Answer> {
        let request = self.auth(self.agent.post(format!("{}{path}", self.base)).header("content-type", content_type));
        let response = request.send(body).map_err(|e| self.unreachable(e))?;
        Self::answer(response)
    }

    /// PUT `body` as JSON; the answer whatever its status.
    pub(crate) fn put_raw<B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<Answer> {
        let request =
            self.auth(self.agent.put(format!("{}{path}", self.base)).header("content-type", "application/json"));
        let response = request.send(serde_json::to_vec(body)?.as_slice()).map_err(|e| self.unreachable(e))?;
        Self::answer(response)
    }

    /// DELETE (with the JSON content type the server's guard asks of every
    /// state-changing request); the answer whatever its status.
    pub(crate) fn delete_raw(&self, path: &str) -> anyhow::Result<Answer> {
        let request =
            self.auth(self.agent.delete(format!("{}{path}", self.base)).header("content-type", "application/json"));
        let response = request.call().map_err(|e| self.unreachable(e))?;
        Self::answer(response)
    }

    /// POST `body` as JSON, the answer as `T`; an error answer is an error.
    pub(crate) fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.post_raw(path, "application/json", &serde_json::to_vec(body)?)?.into_ok()
    }
}

/// A server's answer: its status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    status: u16,
    text: String,
}

impl Answer {
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as `T`, whatever the status (`/ready` answers 503 with a
    /// readiness body); `None` when it is not one.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(&self.text).ok()
    }

    /// The error of an error answer (`{"error":{…}}`), if it holds one.
    pub(crate) fn error(&self) -> Option<ErrorInfo> {
        self.parse::<ErrorResponse>().map(|e| e.error)
    }

    /// The body of a 2xx answer as `T`, or the server's error as an error.
    pub(crate) fn into_ok<T: DeserializeOwned>(self) -> anyhow::Result<T> {
        if !self.is_success() {
            let status = self.status;
            let (code, message) = match self.error() {
                Some(ErrorInfo { code, message, .. }) => (code, message),
                None => ("error".to_owned(), self.text),
            };
            bail!("server answered {status} [{code}]: {message}");
        }
        serde_json::from_str(&self.text).with_context(|| {
            let start: String = self.text.chars().take(200).collect();
            format!("the server's answer is not what this weir expects: {start}")
        })
    }

    pub(crate) fn status(&self) -> u16 {
        self.status
    }
}

/// Percent-encode a query or path component.
pub(super) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
