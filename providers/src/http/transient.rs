//! Status checks of a job already paid for: a transient failure of one check (a 429, a 5xx,
//! a dropped connection) is a reason to check again, not to abandon the job.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::ProviderError;

use super::PollStatus;

/// The retryable failure in a row at which a wait is given up, unless a provider says otherwise.
pub const GIVE_UP_AT: u32 = 3;

/// Counts retryable status-check failures in a row, and turns each but the last allowed into
/// a pending check.
#[derive(Debug)]
pub struct TransientChecks {
    in_a_row: AtomicU32,
    max: u32,
}

impl TransientChecks {
    /// Gives up at the `max`-th retryable failure in a row (at the first with 1 or less).
    pub fn new(max: u32) -> Self {
        Self {
            in_a_row: AtomicU32::new(0),
            max,
        }
    }

    /// `checked` as the poll should see it: a retryable failure below the limit is pending
    /// (its kind shown as the status); anything else passes, a result resetting the count.
    pub fn judge<T>(
        &self,
        checked: Result<PollStatus<T>, ProviderError>,
    ) -> Result<PollStatus<T>, ProviderError> {
        match checked {
            Err(e)
                if e.retryable && self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1 < self.max =>
            {
                Ok(PollStatus::Pending {
                    status: Some(format!(
                        "status check failed ({}), checking again",
                        e.kind.as_str()
                    )),
                })
            }
            Err(e) => Err(e),
            Ok(status) => {
                self.in_a_row.store(0, Ordering::Relaxed);
                Ok(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn retryable_failures_are_pending_until_the_limit_in_a_row() {
        let checks = TransientChecks::new(3);
        let busy =
            || Err::<PollStatus<()>, _>(ProviderError::new(ErrorKind::UpstreamUnavailable, "503"));
        assert!(matches!(
            checks.judge(busy()),
            Ok(PollStatus::Pending { .. })
        ));
        assert!(matches!(
            checks.judge(busy()),
            Ok(PollStatus::Pending { .. })
        ));
        assert!(checks.judge(busy()).is_err());
        // A result in between starts the count again.
        let checks = TransientChecks::new(3);
        assert!(checks.judge(busy()).is_ok());
        assert!(checks
            .judge(Ok(PollStatus::<()>::Pending { status: None }))
            .is_ok());
        assert!(checks.judge(busy()).is_ok());
        assert!(checks.judge(busy()).is_ok());
        let refused = Err::<PollStatus<()>, _>(
            ProviderError::new(ErrorKind::ContentPolicy, "no").with_retryable(false),
        );
        assert!(TransientChecks::new(3).judge(refused).is_err());
    }
}
