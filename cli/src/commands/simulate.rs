//! `pigeonhole simulate`: a bounded load test. Registers N clients, runs one
//! backoff poller per client for a fixed time, shows a live progress line and
//! prints a summary.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use pigeonhole::crypto::Key;
use pigeonhole::domain::{DEFAULT_POLL_LIMIT, MAX_RECIPIENTS};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::{ctrl_c, print_line, Ctx};
use crate::api::{publish_body, Api, ApiError, Audience, Credentials, Poll};
use crate::backoff::{jitter_unit, Backoff, PollOutcome};
use crate::error::{CliError, EXIT_FAILURE, EXIT_OK};
use crate::fingerprint;
use crate::message::{open_delivered, Plain};
use crate::retry::Retry;
use crate::status::StatusLine;

const EXAMPLES: &str = "\
Examples:
  pigeonhole simulate --url http://127.0.0.1:8080 --clients 100 --duration 60
  PIGEONHOLE_ADMIN_TOKEN=dev-admin-token \\
    pigeonhole simulate --url http://127.0.0.1:8080 --clients 50 --duration 30 --publish-every 5

Each simulated client registers with a random fingerprint (named `sim-<n>`),
then polls on the 3 → 30 s schedule (first polls spread over the first
interval, every wait jittered by [0.9, 1.1]), verifies, decrypts and acks what
it receives. The summary reports the peak-to-mean ratio of polls per second
(busiest one-second bucket over the mean). With --publish-every, a message is published to all of them that
often, so `received` means something, and the summary reports the delivery
lag: from sending the publish request to the poll that brought the message
(p50 and p99), which includes the clients' poll interval, as a real client
on that schedule would see it. Given the admin token, the registrations
carry it (X-Admin-Token), so the server's per-address register limit does not
apply; without it a 429 is waited out as its Retry-After asks. Stops by itself
after --duration (or on Ctrl-C) and prints a summary; with --cost, also what
the same fleet doing the same all month would cost on AWS (docs/cost.md). Exit code 1 if no client could register or a
message failed verification. Only point it at a deployment you run.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct SimulateArgs {
    /// Number of simulated clients
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=MAX_RECIPIENTS as i64))]
    pub clients: u32,

    /// How long the clients poll, in seconds
    #[arg(long, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,

    /// Publish a message to every simulated client this often, in seconds
    /// (needs the admin token)
    #[arg(long, value_name = "SECS")]
    pub publish_every: Option<f64>,

    /// Admin token, for --publish-every; registrations carry it too, so the
    /// server does not rate limit them
    #[arg(long, env = "PIGEONHOLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Registrations in flight at once
    #[arg(long, default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub register_concurrency: u32,

    /// Also estimate what this fleet would cost a month on AWS doing all
    /// month what it did in the run (the model and prices of docs/cost.md)
    #[arg(long)]
    pub cost: bool,

    /// Print the summary as one JSON object
    #[arg(long)]
    pub json: bool,

    /// First step of the schedule in milliseconds (testing)
    #[arg(long, hide = true, default_value_t = 3000)]
    pub interval_base_ms: u64,
}

#[derive(Debug, Default)]
struct Stats {
    polls: u64,
    empty: u64,
    pages: u64,
    received: u64,
    rejected: u64,
    rate_limited: u64,
    errors: u64,
    published: u64,
    acks: u64,
    latencies_us: Vec<u32>,
    /// Publish sent → message received, per message, in milliseconds.
    lags_ms: Vec<u32>,
    /// Polls sent in each whole second since the run started.
    polls_per_bucket: Vec<u64>,
    last_error: Option<String>,
}

impl Stats {
    /// Counts a poll sent `since_start` after the run started.
    fn poll_at(&mut self, since_start: Duration) {
        let bucket = since_start.as_secs() as usize;
        if self.polls_per_bucket.len() <= bucket {
            self.polls_per_bucket.resize(bucket + 1, 0);
        }
        self.polls_per_bucket[bucket] += 1;
    }

    fn error(&mut self, e: impl ToString) {
        self.errors += 1;
        self.last_error = Some(e.to_string());
    }
}

type Shared = Arc<Mutex<Stats>>;

fn lock(stats: &Shared) -> std::sync::MutexGuard<'_, Stats> {
    // A poisoned lock only means a task panicked; the counters are still fine.
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Peak-to-mean ratio of polls per second: the busiest one-second bucket
/// over the mean of all `buckets` whole and partial seconds of the run
/// (`counts` may be shorter: seconds without a poll count as 0). `None` when
/// nothing was polled. 1.0 is a perfectly even load.
pub fn peak_to_mean(counts: &[u64], buckets: usize) -> Option<f64> {
    let buckets = buckets.max(counts.len()).max(1);
    let total: u64 = counts.iter().sum();
    let peak = counts.iter().copied().max()?;
    if total == 0 {
        return None;
    }
    Some(peak as f64 / (total as f64 / buckets as f64))
}

fn ms(us: Option<u32>) -> String {
    us.map_or("-".into(), |us| format!("{:.1} ms", f64::from(us) / 1000.0))
}

struct Sim {
    api: Api,
    started: Instant,
    deadline: Instant,
    step: Duration,
    stats: Shared,
}

impl Sim {
    async fn poller(self: Arc<Self>, creds: Credentials, key: Key) {
        let mut backoff = Backoff::with_step(self.step);
        let mut cursor = 0u64;
        // Spread the first polls evenly over the first interval (one step)
        // so the clients don't move in lockstep; the jittered schedule
        // keeps them apart afterwards.
        let first = self.step.mul_f64(jitter_unit());
        sleep_until((self.started + first).min(self.deadline)).await;
        while Instant::now() < self.deadline {
            let started = Instant::now();
            lock(&self.stats).poll_at(started.duration_since(self.started));
            let result = self
                .api
                .poll(&creds, (cursor > 0).then_some(cursor), DEFAULT_POLL_LIMIT)
                .await;
            let latency = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            let outcome = match result {
                Ok(Poll::Empty) => {
                    let mut s = lock(&self.stats);
                    s.polls += 1;
                    s.empty += 1;
                    s.latencies_us.push(latency);
                    PollOutcome::Empty
                }
                Ok(Poll::Page(page)) => {
                    // A page of expired ids only holds no message: ack its
                    // next_cursor and poll again at once.
                    let full_page = page.messages.len() >= DEFAULT_POLL_LIMIT as usize
                        || page.messages.is_empty();
                    let (mut ok, mut bad) = (0, 0);
                    let mut lags = Vec::new();
                    let received_at = now_ms();
                    for m in &page.messages {
                        match open_delivered(&key, &creds.client_id, m) {
                            Ok(plain) => {
                                ok += 1;
                                lags.extend(delivery_lag_ms(&plain, received_at));
                            }
                            Err(_) => bad += 1,
                        }
                    }
                    let moved = page.reach() > cursor;
                    cursor = cursor.max(page.reach());
                    {
                        let mut s = lock(&self.stats);
                        s.polls += 1;
                        s.pages += 1;
                        s.received += ok;
                        s.rejected += bad;
                        s.latencies_us.push(latency);
                        s.lags_ms.extend(lags);
                    }
                    if !moved {
                        PollOutcome::Empty
                    } else {
                        match self.api.ack(&creds, cursor).await {
                            Ok(_) => lock(&self.stats).acks += 1,
                            Err(e) => lock(&self.stats).error(format!("ack: {e}")),
                        }
                        PollOutcome::Messages { full_page }
                    }
                }
                Err(e) => {
                    let mut s = lock(&self.stats);
                    if let ApiError::Server { .. } = e {
                        s.polls += 1;
                        s.latencies_us.push(latency);
                    }
                    if let Some(wait) = e.rate_limited() {
                        s.rate_limited += 1;
                        PollOutcome::RetryAfter { wait }
                    } else {
                        s.error(format!("poll: {e}"));
                        // A 503 `unavailable` says when to come back.
                        e.retry_after()
                            .map_or(PollOutcome::Failed, |wait| PollOutcome::RetryAfter { wait })
                    }
                }
            };
            let delay = backoff.next_wait(outcome, jitter_unit());
            sleep_until((Instant::now() + delay).min(self.deadline)).await;
        }
    }

    async fn publisher(self: Arc<Self>, token: String, ids: Vec<String>, every: Duration) {
        let mut next = Instant::now() + every;
        loop {
            sleep_until(next.min(self.deadline)).await;
            if Instant::now() >= self.deadline {
                return;
            }
            for batch in ids.chunks(MAX_RECIPIENTS) {
                let result = self
                    .api
                    .publish(
                        &token,
                        None,
                        &publish_body(
                            Audience::Clients(batch),
                            SIMULATE_KIND,
                            &serde_json::json!({"at": now_ms()}),
                            None,
                        ),
                    )
                    .await;
                let mut s = lock(&self.stats);
                match result {
                    Ok(receipt) => s.published += receipt.recipients.unwrap_or(0),
                    Err(e) => s.error(format!("publish: {e}")),
                }
            }
            next += every;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The kind of the messages the simulation publishes; their payload is
/// `{"at": <ms since the epoch when the publish was sent>}`.
const SIMULATE_KIND: &str = "simulate";

/// How long a message the simulation published took to be received at
/// `received_at` (ms since the epoch); `None` for any other message. Both
/// times come from this machine's clock.
fn delivery_lag_ms(plain: &Plain, received_at: u64) -> Option<u32> {
    if plain.kind != SIMULATE_KIND {
        return None;
    }
    let sent = plain.payload.get("at")?.as_u64()?;
    Some(received_at.saturating_sub(sent).min(u64::from(u32::MAX)) as u32)
}

#[derive(Debug, Serialize)]
struct Summary {
    url: String,
    clients: usize,
    seconds: f64,
    polls: u64,
    polls_per_second: f64,
    /// Busiest second's polls over the mean polls per second (per-second
    /// buckets over the run); 1.0 is an even load.
    peak_to_mean: Option<f64>,
    empty_polls: u64,
    message_polls: u64,
    received: u64,
    failed_verification: u64,
    published: u64,
    rate_limited: u64,
    errors: u64,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Delivery lag (publish sent → message received) of the published
    /// messages received, when there were any.
    delivery_p50_ms: Option<f64>,
    delivery_p99_ms: Option<f64>,
    delivery_max_ms: Option<f64>,
    last_error: Option<String>,
    interrupted: bool,
    /// With --cost: the month's bill, with every poll writing (the
    /// default poll mode) and read-mostly.
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_per_month: Option<MonthlyCost>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct MonthlyCost {
    api_gateway: f64,
    lambda: f64,
    dynamodb: f64,
    sqs: f64,
    total: f64,
    /// The total with `PollMode=read-mostly`.
    total_read_mostly: f64,
}

/// What the run's requests would cost a month on AWS, repeated all month
/// (registrations left out: they happen once).
fn monthly_cost(s: &Stats, clients: usize, seconds: f64) -> MonthlyCost {
    use pigeonhole::cost::{estimate, Activity, PollWrites, MONTH_SECS, US_EAST_1};
    let clients = clients as f64;
    let published = s.published as f64;
    let activity = Activity {
        empty_polls: s.empty as f64,
        message_polls: s.pages as f64,
        acks: s.acks as f64,
        publishes: published,
        // Jobs of at most 1,000 recipients each.
        fanout_jobs: published * (clients / 1_000.0).ceil(),
        deliveries: published * clients,
    };
    let factor = MONTH_SECS / seconds.max(1e-3);
    let exact = estimate(&activity, PollWrites::Every, &US_EAST_1).times(factor);
    // Read-mostly writes last seen once a minute per client: a share of
    // the polls equal to the mean interval over 60 s.
    let interval = seconds * clients / (s.polls.max(1) as f64);
    let read_mostly =
        estimate(&activity, PollWrites::Fraction(interval / 60.0), &US_EAST_1).times(factor);
    MonthlyCost {
        api_gateway: exact.api_gateway,
        lambda: exact.lambda,
        dynamodb: exact.dynamodb,
        sqs: exact.sqs,
        total: exact.total(),
        total_read_mostly: read_mostly.total(),
    }
}

/// Retries of one registration that the server rate limited (429) or
/// asked to come back to (503 with Retry-After).
const REGISTER_RETRIES: u32 = 5;

async fn register_all(
    api: &Api,
    count: u32,
    concurrency: u32,
    admin_token: Option<&str>,
    status: &mut StatusLine,
) -> (Vec<Credentials>, Vec<ApiError>) {
    let gate = Arc::new(Semaphore::new(concurrency as usize));
    let mut tasks = JoinSet::new();
    for n in 1..=count {
        let (api, gate) = (api.clone(), gate.clone());
        let admin_token = admin_token.map(str::to_string);
        tasks.spawn(async move {
            let _permit = gate
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let name = format!("sim-{n}");
            let fingerprint = fingerprint::random();
            // Idempotent per fingerprint, so a retry is safe.
            Retry::new(REGISTER_RETRIES)
                .only_when_asked()
                .run(
                    || api.register(&fingerprint, Some(&name), admin_token.as_deref()),
                    |_, _, _| {},
                )
                .await
                .map(|(c, _)| c)
        });
    }
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(creds)) => ok.push(creds),
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(ApiError::Protocol(format!("registration task failed: {e}"))),
        }
        status.show(&format!(
            "registering clients: {}/{count}",
            ok.len() + failed.len()
        ));
    }
    (ok, failed)
}

pub async fn run(ctx: &Ctx, args: SimulateArgs) -> Result<u8, CliError> {
    let publish_every = match args.publish_every {
        None => None,
        Some(secs) if secs.is_finite() && secs >= 0.05 => Some(Duration::from_secs_f64(secs)),
        Some(_) => {
            return Err(CliError::Usage(
                "--publish-every must be at least 0.05 seconds".into(),
            ))
        }
    };
    let admin_token = match (publish_every, args.admin_token.as_deref()) {
        (Some(_), None | Some("")) => {
            return Err(CliError::Usage(
                "--publish-every needs --admin-token or PIGEONHOLE_ADMIN_TOKEN".into(),
            ))
        }
        (_, token) => token.filter(|t| !t.is_empty()).map(str::to_string),
    };
    let api = ctx.server_api()?;
    let mut status = StatusLine::stderr();

    let registered = tokio::select! {
        r = register_all(
            &api,
            args.clients,
            args.register_concurrency,
            admin_token.as_deref(),
            &mut status,
        ) => r,
        () = ctrl_c() => {
            status.note("interrupted while registering");
            return Ok(EXIT_OK);
        }
    };
    let (clients, failures) = registered;
    if let Some(first) = failures.first() {
        status.note(&format!(
            "warning: {} of {} registrations failed; first: {first}",
            failures.len(),
            args.clients
        ));
    }
    if clients.is_empty() {
        return Err(CliError::Failed(
            "no simulated client could register".into(),
        ));
    }

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let sim = Arc::new(Sim {
        api: api.clone(),
        started,
        deadline,
        step: Duration::from_millis(args.interval_base_ms),
        stats: Arc::new(Mutex::new(Stats::default())),
    });
    let mut tasks = JoinSet::new();
    let ids: Vec<String> = clients.iter().map(|c| c.client_id.clone()).collect();
    for creds in clients {
        let Some(key) = Key::from_base64(&creds.personal_token) else {
            lock(&sim.stats).error("register returned an invalid personal_token");
            continue;
        };
        tasks.spawn(sim.clone().poller(creds, key));
    }
    if let (Some(every), Some(token)) = (publish_every, admin_token) {
        tasks.spawn(sim.clone().publisher(token, ids.clone(), every));
    }

    // Live progress until every task ends (at the deadline), Ctrl-C, or a
    // grace period after the deadline for requests still in flight.
    let report_every = if status.enabled() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let mut ticker = tokio::time::interval_at(started + report_every, report_every);
    let mut interrupt = std::pin::pin!(ctrl_c());
    let grace = deadline + Duration::from_secs(5);
    let (mut last_polls, mut last_at) = (0u64, started);
    let mut interrupted = false;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Err(e)) if e.is_panic() => lock(&sim.stats).error(format!("task panicked: {e}")),
                Some(_) => {}
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                let line = {
                    let s = lock(&sim.stats);
                    let mut sorted = s.latencies_us.clone();
                    sorted.sort_unstable();
                    let rate = (s.polls - last_polls) as f64
                        / now.duration_since(last_at).as_secs_f64().max(1e-3);
                    last_polls = s.polls;
                    format!(
                        "[{:>4}/{} s] clients {} · polls/s {rate:.1} · received {} · errors {} · p50 {} · p99 {}",
                        now.duration_since(started).as_secs().min(args.duration),
                        args.duration,
                        ids.len(),
                        s.received,
                        s.errors + s.rejected,
                        ms(percentile(&sorted, 50.0)),
                        ms(percentile(&sorted, 99.0)),
                    )
                };
                last_at = now;
                if status.enabled() {
                    status.show(&line);
                } else {
                    eprintln!("{line}");
                }
            }
            () = &mut interrupt => { interrupted = true; break; }
            () = sleep_until(grace) => break,
        }
    }
    tasks.abort_all();
    status.clear();

    let elapsed = Instant::now().min(deadline).duration_since(started);
    let s = lock(&sim.stats);
    let mut sorted = s.latencies_us.clone();
    sorted.sort_unstable();
    let pct = |p: f64| percentile(&sorted, p).map(|us| f64::from(us) / 1000.0);
    let mut lags = s.lags_ms.clone();
    lags.sort_unstable();
    let lag = |p: f64| percentile(&lags, p).map(f64::from);
    let summary = Summary {
        url: api.base().to_string(),
        clients: ids.len(),
        seconds: elapsed.as_secs_f64(),
        polls: s.polls,
        polls_per_second: s.polls as f64 / elapsed.as_secs_f64().max(1e-3),
        peak_to_mean: peak_to_mean(&s.polls_per_bucket, elapsed.as_secs_f64().ceil() as usize),
        empty_polls: s.empty,
        message_polls: s.pages,
        received: s.received,
        failed_verification: s.rejected,
        published: s.published,
        rate_limited: s.rate_limited,
        errors: s.errors,
        p50_ms: pct(50.0),
        p90_ms: pct(90.0),
        p99_ms: pct(99.0),
        max_ms: pct(100.0),
        delivery_p50_ms: lag(50.0),
        delivery_p99_ms: lag(99.0),
        delivery_max_ms: lag(100.0),
        last_error: s.last_error.clone(),
        interrupted,
        cost_per_month: args
            .cost
            .then(|| monthly_cost(&s, ids.len(), elapsed.as_secs_f64())),
    };
    drop(s);
    if args.json {
        print_line(&serde_json::to_string(&summary).expect("summary serializes"))?;
    } else {
        for line in summary_lines(&summary) {
            print_line(&line)?;
        }
    }
    Ok(if summary.failed_verification > 0 {
        EXIT_FAILURE
    } else {
        EXIT_OK
    })
}

fn summary_lines(s: &Summary) -> Vec<String> {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
    let mut lines = vec![
        format!(
            "simulated {} clients for {:.1} s against {}{}",
            s.clients,
            s.seconds,
            s.url,
            if s.interrupted { " (interrupted)" } else { "" }
        ),
        format!(
            "polls      {} ({:.1}/s, peak-to-mean {}): {} empty, {} with messages, {} rate limited",
            s.polls,
            s.polls_per_second,
            s.peak_to_mean.map_or("-".into(), |r| format!("{r:.2}")),
            s.empty_polls,
            s.message_polls,
            s.rate_limited
        ),
        format!(
            "messages   {} received and decrypted, {} failed verification, {} published",
            s.received, s.failed_verification, s.published
        ),
        format!(
            "latency    p50 {}, p90 {}, p99 {}, max {}",
            f(s.p50_ms),
            f(s.p90_ms),
            f(s.p99_ms),
            f(s.max_ms)
        ),
        match (s.delivery_p50_ms, s.delivery_p99_ms) {
            (Some(p50), Some(p99)) => format!(
                "delivery   p50 {}, p99 {}, max {} (publish sent → message received)",
                f(Some(p50)),
                f(Some(p99)),
                f(s.delivery_max_ms)
            ),
            _ => "delivery   - (nothing published was received; see --publish-every)".to_string(),
        },
        format!("errors     {}", s.errors),
    ];
    if let Some(c) = &s.cost_per_month {
        lines.push(format!(
            "cost       ${:.2} a month on AWS for {} clients doing this all month: API Gateway ${:.2}, \
             Lambda ${:.2}, DynamoDB ${:.2}, SQS ${:.2}; with PollMode=read-mostly ${:.2} \
             (us-east-1 prices and the model of docs/cost.md)",
            c.total, s.clients, c.api_gateway, c.lambda, c.dynamodb, c.sqs, c.total_read_mostly
        ));
    }
    if let Some(e) = &s.last_error {
        lines.push(format!("last error {e}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plain(kind: &str, payload: serde_json::Value) -> Plain {
        Plain {
            kind: kind.into(),
            payload,
        }
    }

    #[test]
    fn the_delivery_lag_of_a_simulated_publish() {
        let sent = plain(SIMULATE_KIND, json!({"at": 1_000}));
        assert_eq!(delivery_lag_ms(&sent, 1_250), Some(250));
        // A clock that went back counts as no lag, not as a huge one.
        assert_eq!(delivery_lag_ms(&sent, 900), Some(0));
        // Messages the simulation did not publish are not measured.
        assert_eq!(
            delivery_lag_ms(&plain("event", json!({"at": 1_000})), 1_250),
            None
        );
        assert_eq!(
            delivery_lag_ms(&plain(SIMULATE_KIND, json!({})), 1_250),
            None
        );
        assert_eq!(
            delivery_lag_ms(&plain(SIMULATE_KIND, json!("x")), 1_250),
            None
        );
    }

    fn summary() -> Summary {
        Summary {
            url: "http://127.0.0.1:8080/api/v1".into(),
            clients: 2,
            seconds: 3.0,
            polls: 10,
            polls_per_second: 3.3,
            peak_to_mean: Some(1.2),
            empty_polls: 8,
            message_polls: 2,
            received: 2,
            failed_verification: 0,
            published: 2,
            rate_limited: 0,
            errors: 0,
            p50_ms: Some(1.0),
            p90_ms: Some(2.0),
            p99_ms: Some(3.0),
            max_ms: Some(3.0),
            delivery_p50_ms: Some(120.0),
            delivery_p99_ms: Some(2_900.0),
            delivery_max_ms: Some(3_000.0),
            last_error: None,
            interrupted: false,
            cost_per_month: None,
        }
    }

    #[test]
    fn the_cost_is_the_runs_requests_for_a_month() {
        // 100 clients polling every 30 s for 60 s and one publish to all
        // of them: what docs/cost.md's model says of that, times a month.
        let stats = Stats {
            polls: 200,
            empty: 100,
            pages: 100,
            acks: 100,
            published: 1,
            ..Stats::default()
        };
        let cost = monthly_cost(&stats, 100, 60.0);
        let month = 2_592_000.0 / 60.0;
        // 301 HTTP requests: 200 polls, 100 acks, 1 publish.
        assert!(
            (cost.api_gateway - 301.0 * 1e-6 * month).abs() < 1e-6,
            "{cost:?}"
        );
        assert!(cost.total > cost.total_read_mostly, "{cost:?}");
        let sum = cost.api_gateway + cost.lambda + cost.dynamodb + cost.sqs;
        assert!((cost.total - sum).abs() < 1e-9);
        let lines = summary_lines(&Summary {
            cost_per_month: Some(cost),
            ..summary()
        });
        let line = lines
            .iter()
            .find(|l| l.starts_with("cost "))
            .expect("a cost line");
        assert!(
            line.contains(&format!("${:.2} a month", cost.total)),
            "{line}"
        );
        let json = serde_json::to_value(Summary {
            cost_per_month: Some(cost),
            ..summary()
        })
        .unwrap();
        assert!(json["cost_per_month"]["total"].as_f64().unwrap() > 0.0);
        assert!(serde_json::to_value(summary())
            .unwrap()
            .get("cost_per_month")
            .is_none());
    }

    #[test]
    fn the_summary_reports_the_delivery_lag() {
        let lines = summary_lines(&summary());
        assert!(
            lines.contains(
                &"delivery   p50 120.0 ms, p99 2900.0 ms, max 3000.0 ms (publish sent → message received)"
                    .to_string()
            ),
            "{lines:?}"
        );
        let json: serde_json::Value = serde_json::to_value(summary()).unwrap();
        assert_eq!(json["delivery_p50_ms"], json!(120.0));
        assert_eq!(json["delivery_p99_ms"], json!(2900.0));
        let none = Summary {
            delivery_p50_ms: None,
            delivery_p99_ms: None,
            delivery_max_ms: None,
            ..summary()
        };
        assert!(summary_lines(&none)
            .iter()
            .any(|l| l.starts_with("delivery   - (nothing published")));
        assert_eq!(
            serde_json::to_value(none).unwrap()["delivery_p99_ms"],
            json!(null)
        );
    }

    #[test]
    fn peak_to_mean_of_polls_per_second() {
        assert_eq!(peak_to_mean(&[], 5), None);
        assert_eq!(peak_to_mean(&[0, 0], 2), None);
        assert_eq!(peak_to_mean(&[10, 10, 10], 3), Some(1.0));
        // 30 polls over 3 s: mean 10/s, peak 20.
        assert_eq!(peak_to_mean(&[20, 5, 5], 3), Some(2.0));
        // Seconds after the last poll count, as zeros.
        assert_eq!(peak_to_mean(&[10, 10], 4), Some(2.0));
        // More buckets than seconds (a poll in the grace period) still counts.
        assert_eq!(peak_to_mean(&[10, 10], 1), Some(1.0));

        let mut s = Stats::default();
        for ms in [0, 400, 999, 1_000, 2_500] {
            s.poll_at(Duration::from_millis(ms));
        }
        assert_eq!(s.polls_per_bucket, [3, 1, 1]);
        let r = peak_to_mean(&s.polls_per_bucket, 3).unwrap();
        assert!((r - 1.8).abs() < 1e-9, "{r}");

        let lines = summary_lines(&summary());
        assert!(lines[1].contains("peak-to-mean 1.20"), "{lines:?}");
        assert_eq!(
            serde_json::to_value(summary()).unwrap()["peak_to_mean"],
            json!(1.2)
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
    }
}
