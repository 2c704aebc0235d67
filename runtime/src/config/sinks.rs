//! `[[sinks]]`: webhook sinks, each a subscription named `sinks/<name>`
//! whose invocation is one signed HTTP POST (runtime/src/sink/).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::*;

/// Default `timeout` of a sink: the whole request, connect to answer.
pub const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `timeout` accepted: a worker waits this long at most per attempt.
pub const MAX_SINK_TIMEOUT: Duration = Duration::from_secs(300);
/// The pipeline part of a sink's subscription name: `sinks/<name>`.
pub const SINK_PIPELINE: &str = "sinks";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    name: String,
    topics: Vec<String>,
    url: String,
    /// The name of the environment variable holding the secret.
    secret_env: String,
    timeout: Option<String>,
    format: Option<String>,
    from: Option<String>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    ready: RawReady,
}

/// What a sink sends as the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkFormat {
    /// The event's JSON envelope (docs/events.md), `application/json`.
    #[default]
    Envelope,
    /// A structured-mode CloudEvent, `application/cloudevents+json`.
    CloudEvent,
}

/// A sink's signing secrets: one, or several while a receiver moves to a
/// new one. Its `Debug` shows nothing of them, so a configuration can be
/// logged whole.
#[derive(Clone, PartialEq, Eq)]
pub struct SinkSecret(Vec<Vec<u8>>);

/// Most secrets one sink signs with at once (one signature each per
/// request).
pub const MAX_SINK_SECRETS: usize = 4;

impl SinkSecret {
    /// Secrets as Standard Webhooks writes them, separated by whitespace:
    /// `whsec_<base64>` is the base64-decoded bytes; any other text is used
    /// as its bytes. Each request carries one `v1,` signature per secret,
    /// so a receiver can switch to a new secret without missing a request.
    ///
    /// # Errors
    ///
    /// No secret, more than [`MAX_SINK_SECRETS`], or `whsec_` followed by
    /// something that is not base64. The message never quotes a secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, part) in text.split_whitespace().enumerate() {
            let key = match part.strip_prefix("whsec_") {
                Some(b64) => BASE64
                    .decode(b64)
                    .map_err(|e| format!("secret #{}: the part after `whsec_` is not base64 ({e})", i + 1))?,
                None => part.as_bytes().to_vec(),
            };
            if key.is_empty() {
                return Err(format!("secret #{} is empty", i + 1));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("the secret is empty".to_owned());
        }
        if keys.len() > MAX_SINK_SECRETS {
            return Err(format!("{} secrets; at most {MAX_SINK_SECRETS} at once", keys.len()));
        }
        Ok(Self(keys))
    }

    /// The keys HMAC is computed with, in the order given.
    #[must_use]
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.0
    }
}

impl std::fmt::Debug for SinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkSecret(<redacted>)")
    }
}

/// Where a sink posts: a plain `http://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 when the URL names none).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
    /// The URL as given, for messages.
    pub text: String,
}

impl SinkUrl {
    /// Parse `http://host[:port][/path][?query]`.
    ///
    /// # Errors
    ///
    /// Anything else: another scheme (`https` included: not supported),
    /// user info, a fragment, an empty host or a bad port.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("https://") {
            return Err(format!(
                "{text:?}: https is not supported yet; post to a local TLS-terminating proxy over http"
            ));
        }
        let rest = text.strip_prefix("http://").ok_or_else(|| format!("{text:?} is not an http:// URL"))?;
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) || text.contains('#') {
            return Err(format!("{text:?}: no spaces, control characters or fragment allowed"));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(format!("{text:?}: user info in the URL is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("{text:?}: unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{text:?}: bad port {p:?}"))?,
            None => 80,
        };
        Ok(Self { host: host.to_owned(), port, path, text: text.to_owned() })
    }
}

/// One `[[sinks]]` entry, validated, its secret read from the environment.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Sink name; its subscription is `sinks/<name>`.
    pub name: String,
    /// Topic patterns it receives.
    pub topics: Vec<Pattern>,
    /// Where it posts.
    pub url: SinkUrl,
    /// The environment variable the secret was read from (for messages).
    pub secret_env: String,
    /// The signing secret.
    pub secret: SinkSecret,
    /// Per request, connect to answer. Default [`DEFAULT_SINK_TIMEOUT`].
    pub timeout: Duration,
    /// The body's form. Default the JSON envelope.
    pub format: SinkFormat,
    /// Where the sink starts the first time it runs (it has no cursor
    /// yet). Default the beginning of the log.
    pub from: crate::store::StartPosition,
    /// Retries of 408, 429, 5xx, timeouts and connection errors.
    pub retry: RetryPolicy,
    /// When `GET /ready` calls the sink degraded.
    pub ready: ReadyThresholds,
}

/// Validate `[[sinks]]`. The secret comes from `env` (the process
/// environment outside tests).
pub(super) fn sinks(
    raw: Vec<RawSink>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<SinkConfig>, (String, String)> {
    let mut out: Vec<SinkConfig> = Vec::with_capacity(raw.len());
    for (i, rs) in raw.into_iter().enumerate() {
        let key = format!("sinks[{i}]");
        let at = |field: &str| format!("{key}.{field}");
        check_name(&rs.name).map_err(|e| (at("name"), e))?;
        if out.iter().any(|s| s.name == rs.name) {
            return Err((at("name"), format!("sink {:?} is defined twice", rs.name)));
        }
        if rs.topics.is_empty() {
            return Err((at("topics"), "give at least one topic pattern".into()));
        }
        let topics = rs
            .topics
            .iter()
            .enumerate()
            .map(|(t, text)| Pattern::parse(text).map_err(|e| (format!("{key}.topics[{t}]"), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let url = SinkUrl::parse(&rs.url).map_err(|e| (at("url"), e))?;
        if rs.secret_env.is_empty() {
            return Err((at("secret_env"), "name the environment variable that holds the secret".into()));
        }
        // The message names the variable, never its value.
        let secret = match env(&rs.secret_env) {
            Some(text) => SinkSecret::parse(&text)
                .map_err(|e| (at("secret_env"), format!("environment variable {}: {e}", rs.secret_env)))?,
            None => {
                return Err((at("secret_env"), format!("environment variable {} is not set", rs.secret_env)));
            }
        };
        let timeout = match &rs.timeout {
            Some(text) => {
                let t = duration(text).map_err(|e| (at("timeout"), e))?;
                if t.is_zero() || t > MAX_SINK_TIMEOUT {
                    return Err((at("timeout"), format!("{text:?} is outside (0s, 5m]")));
                }
                t
            }
            None => DEFAULT_SINK_TIMEOUT,
        };
        let format = match rs.format.as_deref() {
            None | Some("envelope") => SinkFormat::Envelope,
            Some("cloudevent") => SinkFormat::CloudEvent,
            Some(other) => {
                return Err((at("format"), format!("{other:?} is not \"envelope\" or \"cloudevent\"")));
            }
        };
        let from = match &rs.from {
            Some(text) => crate::store::StartPosition::parse(text).map_err(|e| (at("from"), e))?,
            None => crate::store::StartPosition::Beginning,
        };
        let retry = retry(&rs.retry).map_err(|(field, reason)| (format!("{key}.retry.{field}"), reason))?;
        let mut ready = ReadyThresholds::default();
        if let Some(n) = rs.ready.max_dlq {
            ready.max_dlq = n;
        }
        if let Some(text) = &rs.ready.max_lag {
            ready.max_lag = duration(text).map_err(|e| (at("ready.max_lag"), e))?;
        }
        out.push(SinkConfig {
            name: rs.name,
            topics,
            url,
            secret_env: rs.secret_env,
            secret,
            timeout,
            format,
            from,
            retry,
            ready,
        });
    }
    Ok(out)
}

/// Default `timeout` of a JetStream sink: one publish until its PubAck.
pub const DEFAULT_JETSTREAM_SINK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJetStreamSink {
    name: String,
    topics: Vec<String>,
    url: String,
    subject: Option<String>,
    token_env: Option<String>,
    user_env: Option<String>,
    password_env: Option<String>,
    timeout: Option<String>,
    from: Option<String>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    ready: RawReady,
}

/// One `[[jetstream_sinks]]` entry: events on `topics` published to
/// JetStream, each with `Nats-Msg-Id` = the event's id. Its subscription is
/// `sinks/<name>`, like a webhook sink's (the two share the names).
#[derive(Debug, Clone)]
pub struct JetStreamSinkConfig {
    /// Sink name; its subscription is `sinks/<name>`.
    pub name: String,
    /// Topic patterns it receives.
    pub topics: Vec<Pattern>,
    /// Where NATS is.
    pub connection: super::NatsConnection,
    /// The subject published to: text with `{topic}` for the event's topic.
    /// Default `{topic}`.
    pub subject: String,
    /// One publish, until its PubAck. Default [`DEFAULT_JETSTREAM_SINK_TIMEOUT`].
    pub timeout: Duration,
    /// Where the sink starts the first time it runs. Default the beginning.
    pub from: crate::store::StartPosition,
    /// Retries of a publish that failed (no PubAck, no stream, no connection).
    pub retry: RetryPolicy,
    /// When `GET /ready` calls the sink degraded.
    pub ready: ReadyThresholds,
    /// `Nats-Msg-Id` is the event's idempotency key instead of its id: set
    /// under `[cluster]`, where a re-run of an input on another node emits
    /// events with new ids but the same idempotency keys.
    pub message_id_is_key: bool,
}

impl JetStreamSinkConfig {
    /// The subject of an event on `topic`.
    #[must_use]
    pub fn subject_for(&self, topic: &str) -> String {
        self.subject.replace("{topic}", topic)
    }
}

/// Validate `[[jetstream_sinks]]`; `taken` are the webhook sinks' names.
pub(super) fn jetstream_sinks(
    raw: Vec<RawJetStreamSink>,
    taken: &[SinkConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<JetStreamSinkConfig>, (String, String)> {
    let mut out: Vec<JetStreamSinkConfig> = Vec::with_capacity(raw.len());
    for (i, rs) in raw.into_iter().enumerate() {
        let key = format!("jetstream_sinks[{i}]");
        let at = |field: &str| format!("{key}.{field}");
        check_name(&rs.name).map_err(|e| (at("name"), e))?;
        if out.iter().any(|s| s.name == rs.name) || taken.iter().any(|s| s.name == rs.name) {
            return Err((
                at("name"),
                format!("sink {:?} is defined twice (sinks share the names sinks/<name>)", rs.name),
            ));
        }
        if rs.topics.is_empty() {
            return Err((at("topics"), "give at least one topic pattern".into()));
        }
        let topics = rs
            .topics
            .iter()
            .enumerate()
            .map(|(t, text)| Pattern::parse(text).map_err(|e| (format!("{key}.topics[{t}]"), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let connection = super::sources::connection(
            &rs.url,
            rs.token_env.as_deref(),
            rs.user_env.as_deref(),
            rs.password_env.as_deref(),
            env,
        )
        .map_err(|(field, e)| (at(field), e))?;
        let subject = rs.subject.unwrap_or_else(|| "{topic}".to_owned());
        let sample = subject.replace("{topic}", "a.b.c");
        if sample.is_empty()
            || sample.split('.').any(str::is_empty)
            || sample.chars().any(|c| c.is_whitespace() || c.is_control() || c == '*' || c == '>' || c == '{')
        {
            return Err((at("subject"), format!("{subject:?} is not a subject (with `{{topic}}` for the topic)")));
        }
        let timeout = match &rs.timeout {
            Some(text) => {
                let t = duration(text).map_err(|e| (at("timeout"), e))?;
                if t.is_zero() || t > MAX_SINK_TIMEOUT {
                    return Err((at("timeout"), format!("{text:?} is outside (0s, 5m]")));
                }
                t
            }
            None => DEFAULT_JETSTREAM_SINK_TIMEOUT,
        };
        let from = match &rs.from {
            Some(text) => crate::store::StartPosition::parse(text).map_err(|e| (at("from"), e))?,
            None => crate::store::StartPosition::Beginning,
        };
        let retry = retry(&rs.retry).map_err(|(field, reason)| (format!("{key}.retry.{field}"), reason))?;
        let mut ready = ReadyThresholds::default();
        if let Some(n) = rs.ready.max_dlq {
            ready.max_dlq = n;
        }
        if let Some(text) = &rs.ready.max_lag {
            ready.max_lag = duration(text).map_err(|e| (at("ready.max_lag"), e))?;
        }
        out.push(JetStreamSinkConfig {
            name: rs.name,
            topics,
            connection,
            subject,
            timeout,
            from,
            retry,
            ready,
            message_id_is_key: false,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<SinkConfig>, (String, String)> {
        #[derive(Deserialize)]
        struct Doc {
            sinks: Vec<RawSink>,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| (String::new(), e.to_string()))?;
        sinks(doc.sinks, env)
    }

    const ONE: &str = r#"
        [[sinks]]
        name = "audit"
        topics = ["orders.>"]
        url = "http://127.0.0.1:9000/hook?x=1"
        secret_env = "HOOK_SECRET"
        timeout = "2s"
        format = "cloudevent"
        retry = { max_attempts = 3, initial_backoff = "10ms" }
    "#;

    #[test]
    fn a_sink_reads_its_secret_from_the_environment_and_never_shows_it() {
        let env = |name: &str| (name == "HOOK_SECRET").then(|| "whsec_c2VjcmV0LWJ5dGVz".to_owned());
        let sink = parse(ONE, &env).unwrap().remove(0);
        assert_eq!(sink.secret.keys(), [b"secret-bytes".to_vec()]);
        let two = SinkSecret::parse("whsec_c2VjcmV0LWJ5dGVz  raw-key").unwrap();
        assert_eq!(two.keys(), [b"secret-bytes".to_vec(), b"raw-key".to_vec()]);
        assert!(SinkSecret::parse("  ").is_err());
        assert!(SinkSecret::parse("a b c d e").unwrap_err().contains("at most 4"));
        assert_eq!((sink.url.host.as_str(), sink.url.port, sink.url.path.as_str()), ("127.0.0.1", 9000, "/hook?x=1"));
        assert_eq!(
            (sink.timeout, sink.format, sink.retry.max_attempts),
            (Duration::from_secs(2), SinkFormat::CloudEvent, 3)
        );
        let shown = format!("{sink:?}");
        assert!(!shown.contains("c2VjcmV0") && !shown.contains("secret-bytes"), "{shown}");
    }

    #[test]
    fn a_sink_may_not_share_its_subscription_name_with_a_handler() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("p.wasm");
        std::fs::write(&plugin, b"").unwrap();
        let text = format!(
            "[[pipelines]]\nname = \"sinks\"\ntopics = [\"a.b.c\"]\n[[pipelines.handlers]]\nname = \"hook\"\nplugin = {:?}\n\
             [[sinks]]\nname = \"hook\"\ntopics = [\"a.b.c\"]\nurl = \"http://127.0.0.1:1/\"\nsecret_env = \"PATH\"\n",
            plugin.display().to_string()
        );
        let error = Config::parse(&text, &dir.path().join("weir.toml")).unwrap_err();
        assert_eq!(error.key, "sinks");
        assert!(error.reason.contains("sinks/hook"), "{}", error.reason);
        let other = text.replace("name = \"hook\"\nplugin", "name = \"other\"\nplugin");
        assert_eq!(Config::parse(&other, &dir.path().join("weir.toml")).unwrap().sinks.len(), 1);
    }

    #[test]
    fn a_jetstream_sink_takes_its_subject_template_and_shares_the_sink_names() {
        #[derive(Deserialize)]
        struct Doc {
            jetstream_sinks: Vec<RawJetStreamSink>,
        }
        let parse = |text: &str, taken: &[SinkConfig]| {
            let doc: Doc = toml::from_str(text).unwrap();
            jetstream_sinks(doc.jetstream_sinks, taken, &|name| (name == "TOKEN").then(|| "t0ken".to_owned()))
        };
        let text = r#"
            [[jetstream_sinks]]
            name = "audit"
            topics = ["orders.>"]
            url = "nats://127.0.0.1:4222"
            subject = "out.{topic}"
            token_env = "TOKEN"
        "#;
        let sink = parse(text, &[]).unwrap().remove(0);
        assert_eq!(sink.subject_for("orders.order.created"), "out.orders.order.created");
        assert_eq!(sink.timeout, DEFAULT_JETSTREAM_SINK_TIMEOUT);
        assert!(!format!("{sink:?}").contains("t0ken"));
        let env = |name: &str| (name == "HOOK_SECRET").then(|| "whsec_c2VjcmV0LWJ5dGVz".to_owned());
        let webhook = super::sinks(
            toml::from_str::<std::collections::BTreeMap<String, Vec<RawSink>>>(ONE).unwrap().remove("sinks").unwrap(),
            &env,
        )
        .unwrap();
        let (key, reason) = parse(text, &webhook).unwrap_err();
        assert_eq!(key, "jetstream_sinks[0].name");
        assert!(reason.contains("defined twice"), "{reason}");
        for bad in ["out.*", "out..{topic}", "", "out {topic}"] {
            let (key, _) = parse(&text.replace("out.{topic}", bad), &[]).unwrap_err();
            assert_eq!(key, "jetstream_sinks[0].subject", "{bad:?}");
        }
        let (key, _) = parse(&text.replace("TOKEN\"", "NOPE\""), &[]).unwrap_err();
        assert_eq!(key, "jetstream_sinks[0].token_env");
    }

    #[test]
    fn a_missing_variable_is_named_and_a_bad_url_refused() {
        let (key, reason) = parse(ONE, &|_| None).unwrap_err();
        assert_eq!(key, "sinks[0].secret_env");
        assert!(reason.contains("HOOK_SECRET is not set"), "{reason}");
        let env = |_: &str| Some("whsec_!!".to_owned());
        let (_, reason) = parse(ONE, &env).unwrap_err();
        assert!(reason.contains("not base64") && !reason.contains("!!"), "{reason}");
        for bad in ["https://x/y", "ftp://x", "http://:80/", "http://h:0/", "http://u@h/", "http://h/#f"] {
            assert!(SinkUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(SinkUrl::parse("http://[::1]:81").unwrap().host, "::1");
        assert_eq!(SinkUrl::parse("http://h").unwrap().path, "/");
    }
}
