//! What requests cost on AWS: the model behind docs/cost.md and
//! `pigeonhole simulate --cost`, in one place.
//!
//! An estimate multiplies counts of what a fleet did (polls, acks,
//! publishes, deliveries) by what each costs: API Gateway requests, Lambda
//! invocations and compute, DynamoDB read and write units (the counts
//! `tests/tests/dynamodb_store.rs` pins on DynamoDB Local), SQS requests.
//! Lambda durations are assumptions, not measurements (docs/cost.md says
//! which).

/// us-east-1 list prices, in dollars per unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub api_request: f64,
    pub lambda_request: f64,
    pub lambda_gb_second: f64,
    pub write_unit: f64,
    pub read_unit: f64,
    pub sqs_request: f64,
}

/// The prices docs/cost.md uses (arm64, on-demand, HTTP API), as of the
/// date it names.
pub const US_EAST_1: Prices = Prices {
    api_request: 1.00e-6,
    lambda_request: 0.20e-6,
    lambda_gb_second: 0.000_013_333_4,
    write_unit: 0.625e-6,
    read_unit: 0.125e-6,
    sqs_request: 0.40e-6,
};

/// The template's memory sizes, in GB.
const HTTP_FUNCTION_GB: f64 = 0.25;
const FANOUT_FUNCTION_GB: f64 = 0.5;

/// Billed durations assumed per invocation, in seconds (docs/cost.md).
const EMPTY_POLL_S: f64 = 0.005;
const MESSAGE_POLL_S: f64 = 0.010;
const ACK_S: f64 = 0.005;
const PUBLISH_S: f64 = 0.015;
const FANOUT_JOB_S: f64 = 0.030;

/// What a fleet did, in requests.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Activity {
    pub empty_polls: f64,
    /// Polls that returned messages.
    pub message_polls: f64,
    pub acks: f64,
    pub publishes: f64,
    /// Fan-out jobs (a publish to `n` named clients makes `ceil(n / 1000)`).
    pub fanout_jobs: f64,
    /// Messages stored in an inbox (one per recipient of a publish).
    pub deliveries: f64,
}

/// How polls are recorded on DynamoDB (`POLL_MODE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PollWrites {
    /// One write per poll.
    Every,
    /// One write per this fraction of empty polls, a read for the rest
    /// (`read-mostly`: an interval of `T` s writes `T / 60` of them).
    Fraction(f64),
}

/// A bill, in dollars, by service.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bill {
    pub api_gateway: f64,
    pub lambda: f64,
    pub dynamodb: f64,
    pub sqs: f64,
}

impl Bill {
    pub fn total(&self) -> f64 {
        self.api_gateway + self.lambda + self.dynamodb + self.sqs
    }

    /// The bill of `factor` times the activity (a run scaled to a month).
    pub fn times(&self, factor: f64) -> Bill {
        Bill {
            api_gateway: self.api_gateway * factor,
            lambda: self.lambda * factor,
            dynamodb: self.dynamodb * factor,
            sqs: self.sqs * factor,
        }
    }
}

/// Seconds in the 30-day month docs/cost.md uses.
pub const MONTH_SECS: f64 = 2_592_000.0;

/// What `activity` costs at `prices`.
pub fn estimate(activity: &Activity, polls: PollWrites, prices: &Prices) -> Bill {
    let a = activity;
    let http = a.empty_polls + a.message_polls + a.acks + a.publishes;
    let invocations = http + a.fanout_jobs;
    let gb_seconds = HTTP_FUNCTION_GB
        * (a.empty_polls * EMPTY_POLL_S
            + a.message_polls * MESSAGE_POLL_S
            + a.acks * ACK_S
            + a.publishes * PUBLISH_S)
        + FANOUT_FUNCTION_GB * a.fanout_jobs * FANOUT_JOB_S;
    // Units pinned by tests/tests/dynamodb_store.rs (small messages): an
    // empty poll 1 WRU; a poll with messages 1 WRU + 1 RRU; an ack 1 WRU;
    // a publish's status records 1 WRU for its header and 1 per job; per
    // recipient, 2 RRU of look-ups (marker, client) and a delivery of
    // 1 RRU + 6 WRU (a transaction of three items).
    let (empty_writes, empty_reads) = match polls {
        PollWrites::Every => (a.empty_polls, 0.0),
        PollWrites::Fraction(f) => {
            let f = f.clamp(0.0, 1.0);
            (a.empty_polls * f, a.empty_polls * (1.0 - f))
        }
    };
    let writes =
        empty_writes + a.message_polls + a.acks + a.publishes + a.fanout_jobs + 6.0 * a.deliveries;
    let reads = empty_reads + a.message_polls + 3.0 * a.deliveries;
    // Per job: its SendMessageBatch entry (a batch holds up to 10), the
    // event source's receive and delete.
    let sqs = a.fanout_jobs * 2.0 + (a.fanout_jobs / 10.0).max(a.publishes);
    Bill {
        api_gateway: http * prices.api_request,
        lambda: invocations * prices.lambda_request + gb_seconds * prices.lambda_gb_second,
        dynamodb: writes * prices.write_unit + reads * prices.read_unit,
        sqs: sqs * prices.sqs_request,
    }
}

/// One client's month at a fixed poll interval of `interval_secs`, with one
/// message an hour, each its own publish: docs/cost.md's table rows.
pub fn client_month(interval_secs: f64, polls: PollWrites) -> Bill {
    let polls_a_month = MONTH_SECS / interval_secs;
    let messages = 720.0;
    estimate(
        &Activity {
            empty_polls: polls_a_month - messages,
            message_polls: messages,
            acks: messages,
            publishes: messages,
            fanout_jobs: messages,
            deliveries: messages,
        },
        polls,
        &US_EAST_1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) {
        assert!(
            (got - want).abs() <= want * 0.005,
            "{got} is not about {want}"
        );
    }

    #[test]
    fn the_model_gives_the_table_in_docs_cost_md() {
        // docs/cost.md, "Monthly cost", 1,000 clients.
        for (interval, api, dynamodb, total) in [
            (3.0, 865.0, 544.0, 1_599.0),
            (10.0, 261.0, 166.0, 485.0),
            (30.0, 87.8, 58.4, 166.0),
        ] {
            let bill = client_month(interval, PollWrites::Every).times(1_000.0);
            close(bill.api_gateway, api);
            close(bill.dynamodb, dynamodb);
            close(bill.total(), total);
        }
        // "Read-mostly polls", 10,000 clients.
        for (interval, dynamodb, total) in [(3.0, 1_344.0, 11_885.0), (30.0, 370.0, 1_451.0)] {
            let bill =
                client_month(interval, PollWrites::Fraction(interval / 60.0)).times(10_000.0);
            close(bill.dynamodb, dynamodb);
            close(bill.total(), total);
        }
    }

    #[test]
    fn an_empty_poll_costs_about_a_dollar_eighty_five_per_million() {
        let bill = estimate(
            &Activity {
                empty_polls: 1e6,
                ..Activity::default()
            },
            PollWrites::Every,
            &US_EAST_1,
        );
        close(bill.total(), 1.842);
        assert_eq!(bill.sqs, 0.0);
    }
}
