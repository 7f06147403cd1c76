//! The structured error every tool result and `--json` output carries.
//!
//! Provider errors are mapped here and nowhere else.

use imagegen_providers::{ErrorKind, ProviderError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A failure as reported to MCP clients and `generate --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolError {
    /// What went wrong: one of the provider error kinds (`invalid_request`, `rate_limited`, ...),
    /// `storage` when the image could not be saved, or `internal`.
    pub kind: ToolErrorKind,
    /// A message a person can act on.
    pub message: String,
    /// Whether a later identical call may succeed.
    pub retryable: bool,
    /// Seconds to wait before retrying, when the provider said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// The provider the call went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model the call asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The request parameter at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The provider's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The provider's own error code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<String>,
    /// The provider's request id, to quote to its support.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// How many upstream requests the call made, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The categories the moderation pre-check (`[moderation_check]`) flagged, for its
    /// `content_policy` refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// When the call failed (RFC 3339, UTC), to match it with the server's and provider's logs.
    pub at: String,
    /// For `budget_exceeded`: which budget, what it has spent, this call's estimate and when
    /// it resets.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetDetails>,
}

/// What a `budget_exceeded` error says about the budget the call would have passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetDetails {
    /// The budget, as its setting: `budget.daily_usd`, `budget.providers.openai.monthly_usd`,
    /// `budget.per_caller.daily_usd (caller alice)`, ...
    pub budget: String,
    /// Its limit, USD.
    pub limit_usd: f64,
    /// Spent in the current period, USD: billed, plus calls possibly billed (sent, then timed
    /// out or lost) whose cost is not known.
    pub spent_usd: f64,
    /// Held by calls running now, USD.
    pub reserved_usd: f64,
    /// What this call was estimated to cost, USD.
    pub estimate_usd: f64,
    /// When the period ends and the budget starts afresh (RFC 3339, UTC).
    pub resets_at: String,
}

/// What went wrong in a tool call: a provider error kind, or a failure of this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolErrorKind {
    /// What the provider (or the checks before it) said went wrong.
    Provider(ErrorKind),
    /// The image was made but could not be saved.
    Storage,
    /// The server failed in a way it should not have (a bug).
    Internal,
    /// The call's estimated cost would pass a budget (`[budget]`); nothing was sent. Not a
    /// provider's doing: no key cools down and no fallback is tried.
    BudgetExceeded,
    /// The shared state of the replicas (`[cluster]`) is unreachable and budgets fail closed.
    ClusterUnavailable,
    /// The call's estimate is above `budget.confirm_above_usd` and the client cannot ask the
    /// user: the model should ask, then repeat the call with `confirm_cost: true`.
    ConfirmationRequired,
    /// The user declined to spend what the call was estimated to cost.
    Declined,
}

impl ToolErrorKind {
    /// Every kind's name, as written in results.
    pub fn names() -> Vec<&'static str> {
        ErrorKind::ALL
            .iter()
            .map(|k| k.as_str())
            .chain([
                "storage",
                "internal",
                "budget_exceeded",
                "cluster_unavailable",
                "confirmation_required",
                "declined",
            ])
            .collect()
    }

    /// The snake_case name (`invalid_request`, `storage`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider(kind) => kind.as_str(),
            Self::Storage => "storage",
            Self::Internal => "internal",
            Self::BudgetExceeded => "budget_exceeded",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::ConfirmationRequired => "confirmation_required",
            Self::Declined => "declined",
        }
    }
}

impl From<ErrorKind> for ToolErrorKind {
    fn from(kind: ErrorKind) -> Self {
        Self::Provider(kind)
    }
}

impl PartialEq<ErrorKind> for ToolErrorKind {
    fn eq(&self, other: &ErrorKind) -> bool {
        *self == Self::Provider(*other)
    }
}

impl std::fmt::Display for ToolErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ToolErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ToolErrorKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "storage" => Ok(Self::Storage),
            "internal" => Ok(Self::Internal),
            "budget_exceeded" => Ok(Self::BudgetExceeded),
            "cluster_unavailable" => Ok(Self::ClusterUnavailable),
            "confirmation_required" => Ok(Self::ConfirmationRequired),
            "declined" => Ok(Self::Declined),
            other => other
                .parse::<ErrorKind>()
                .map(Self::Provider)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for ToolErrorKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ToolErrorKind".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": Self::names(),
            "description": "What went wrong: a provider error kind, `storage` (the image could not be saved), `internal` (a bug), `budget_exceeded` (the call would pass a budget; nothing was sent) `cluster_unavailable` (the replicas' shared budget state is unreachable), `confirmation_required` (ask the user, then repeat the call with `confirm_cost: true`) or `declined` (the user said no to the cost)."
        })
    }
}

impl ToolError {
    /// An error of `kind` with nothing but a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::from_provider(ProviderError::new(kind, message), None, None)
    }

    /// An `invalid_request` error about `param`.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::from_provider(ProviderError::invalid_param(param, message), None, None)
    }

    /// The server failed in a way it should not have (a bug); the call is answered anyway.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            kind: ToolErrorKind::Internal,
            ..Self::storage(message)
        }
    }

    /// The image was made but could not be saved.
    pub fn storage(message: impl Into<String>) -> Self {
        Self {
            kind: ToolErrorKind::Storage,
            ..Self::new(ErrorKind::BadResponse, message)
        }
    }

    /// Maps a provider error, naming the provider and model it came from.
    pub fn from_provider(err: ProviderError, provider: Option<&str>, model: Option<&str>) -> Self {
        let mut message = err.message;
        if let Some(provider_message) = err
            .provider_message
            .filter(|m| !message.contains(m.as_str()))
        {
            message = format!("{message} (provider said: {provider_message})");
        }
        Self {
            kind: err.kind.into(),
            message,
            retryable: err.retryable,
            retry_after_s: err.retry_after.map(|d| d.as_secs_f64().ceil() as u64),
            provider: provider.map(str::to_owned),
            model: model.map(str::to_owned),
            param: err.param,
            status: err.status,
            provider_code: err.provider_code,
            request_id: err.request_id,
            attempts: (err.attempts > 0).then_some(err.attempts),
            categories: None,
            at: crate::clock::now_rfc3339(),
            budget: None,
        }
    }

    /// One line for people: the message plus whatever helps act on it.
    pub fn human(&self) -> String {
        let from = self
            .provider
            .as_ref()
            .map(|p| format!(" from provider `{p}`"))
            .unwrap_or_default();
        let mut out = format!("{} error{from}: {}", self.kind, self.message);
        if let Some(s) = self.retry_after_s {
            out.push_str(&format!(" Try again in {s} s."));
        } else if self.retryable {
            out.push_str(" This may succeed if retried.");
        }
        if let Some(id) = &self.request_id {
            out.push_str(&format!(" (request id {id})"));
        }
        out
    }
}
