//! The fan-out's enumeration of a tag or everyone audience.
//!
//! Such a publish is enqueued as one step ([`AudienceStep`], page 0). The
//! worker that takes a step reads the next page of the audience, saves it
//! as the publish's recipient page, enqueues the step for the page after,
//! and delivers to this page like any job. So the audience is walked one
//! page per queue message, each page within one job's size, and the status
//! call finds every recipient on the pages.
//!
//! A step can run twice (a queue redelivery). The page is saved only if
//! absent, and a rerun uses the saved one, so a page's recipients never
//! change; the next step is enqueued again only if the first run did not
//! record that it had ([`RecipientPage::continued`]).

use super::fanout::{Fanout, FanoutError};
use crate::queue::{AudienceStep, FanoutJob};
use crate::store::{Enumerated, RecipientPage, StoreError};

/// A step, turned into the work it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// A plain job for this page's recipients (possibly none).
    pub deliver: FanoutJob,
    /// The step for the next page, when there is one and it has not been
    /// enqueued before. Enqueue it, then [`Fanout::mark_continued`].
    pub next: Option<FanoutJob>,
}

impl Fanout {
    /// Expands a job: a plain job is its own delivery; a step reads, saves
    /// and returns its page.
    pub async fn expand(&self, job: &FanoutJob) -> Result<Expanded, FanoutError> {
        let Some(step) = &job.step else {
            return Ok(Expanded {
                deliver: job.clone(),
                next: None,
            });
        };
        let limit = FanoutJob::recipients_per_job(&job.kind, &job.payload) as u32;
        let found = self
            .store()
            .audience_page(
                &step.audience,
                step.registered_by,
                limit,
                step.page_token.as_deref(),
            )
            .await?
            .map_err(|_| {
                StoreError::Corrupt(format!(
                    "publish {} step {}: the page token does not read",
                    job.publish_id, step.page
                ))
            })?;
        let page = self
            .store()
            .save_recipient_page(
                &job.publish_id,
                RecipientPage {
                    number: step.page,
                    recipients: found.recipients,
                    next: found.next,
                    continued: false,
                },
            )
            .await?;
        let so_far = step.so_far + page.recipients.len() as u64;
        let next = match &page.next {
            Some(token) if !page.continued => Some(FanoutJob {
                recipients: Vec::new(),
                step: Some(AudienceStep {
                    page: step.page + 1,
                    page_token: Some(token.clone()),
                    so_far,
                    ..step.clone()
                }),
                ..job.clone()
            }),
            Some(_) => None,
            None => {
                let enumerated = Enumerated {
                    pages: step.page + 1,
                    recipients: so_far,
                };
                self.store()
                    .finish_enumeration(&job.publish_id, enumerated)
                    .await?;
                tracing::info!(publish_id = %job.publish_id, recipients = so_far, pages = step.page + 1, "audience enumerated");
                None
            }
        };
        Ok(Expanded {
            deliver: FanoutJob {
                recipients: page.recipients,
                step: None,
                ..job.clone()
            },
            next,
        })
    }

    /// Records that the step after `page` of this job's publish is
    /// enqueued.
    pub async fn mark_continued(&self, next: &FanoutJob) -> Result<(), FanoutError> {
        if let Some(step) = &next.step {
            self.store()
                .mark_page_continued(&next.publish_id, step.page - 1)
                .await?;
        }
        Ok(())
    }
}
