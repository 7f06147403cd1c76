//! Cancelling an upstream job that a call abandons (cancelled, past its deadline, failed, or
//! its future dropped), so it stops running and billing: best effort, within a bound.

use std::{sync::Mutex, time::Duration};

use reqwest::{header::HeaderValue, Method};

use super::error::redacted;

/// How long a best-effort cancellation may take.
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// A job to cancel: the request to send and its `Authorization` value (marked sensitive).
#[derive(Debug, Clone)]
pub struct OpenJob {
    /// The job's cancel URL.
    pub url: url::Url,
    /// The `Authorization` header the job was made with.
    pub auth: Option<HeaderValue>,
}

/// Holds the job a call has open; [`CancelOnDrop::cancel`] (or dropping it) cancels that job.
#[derive(Debug)]
pub struct CancelOnDrop {
    client: reqwest::Client,
    method: Method,
    open: Mutex<Option<OpenJob>>,
}

impl CancelOnDrop {
    /// Cancels through `client` with `method` (`POST` for Replicate, `PUT` for fal).
    pub fn new(client: reqwest::Client, method: Method) -> Self {
        Self {
            client,
            method,
            open: Mutex::new(None),
        }
    }

    /// Records the job now open, or `None` once it ended upstream (nothing to cancel).
    pub fn set(&self, open: Option<OpenJob>) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = open;
    }

    fn take(&self) -> Option<OpenJob> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Cancels the open job, if any, waiting at most [`CANCEL_TIMEOUT`].
    pub async fn cancel(&self) {
        if let Some(job) = self.take() {
            send_cancel(self.client.clone(), self.method.clone(), job).await;
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // A dropped call cannot wait: the cancellation runs on its own.
        if let (Some(job), Ok(runtime)) = (self.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(send_cancel(self.client.clone(), self.method.clone(), job));
        }
    }
}

/// Sends one cancellation; its outcome is only logged (never with the URL's query or key).
async fn send_cancel(client: reqwest::Client, method: Method, job: OpenJob) {
    let shown = redacted(&job.url);
    let mut req = client.request(method, job.url).timeout(CANCEL_TIMEOUT);
    if let Some(auth) = job.auth {
        req = req.header(reqwest::header::AUTHORIZATION, auth);
    }
    match tokio::time::timeout(CANCEL_TIMEOUT, req.send()).await {
        Ok(Ok(resp)) => {
            tracing::debug!(url = %shown, status = resp.status().as_u16(), "cancelled the upstream job")
        }
        Ok(Err(e)) => {
            tracing::warn!(url = %shown, error = %e.without_url(), "could not cancel the upstream job")
        }
        Err(_) => tracing::warn!(url = %shown, "cancelling the upstream job took too long"),
    }
}

/// `Authorization: {scheme} {key}`, marked sensitive; `None` when the key cannot be a header.
pub fn auth_header(scheme: &str, key: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("{scheme} {key}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}
