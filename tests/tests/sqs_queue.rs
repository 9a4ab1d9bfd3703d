//! The SQS fan-out queue on moto (over real HTTP): what publish enqueues
//! comes back out whole, once each. The queues are the ones `infra` creates
//! from template.yaml, dead-letter redrive included.

mod aws_support;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use pigeonhole::crypto::{seal, Key};
use pigeonhole::domain::ClientId;
use pigeonhole::queue::{FanoutJob, Queue, SqsQueue, MAX_JOB_BYTES};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn job(publish_id: &str, payload_bytes: usize, recipients: usize) -> FanoutJob {
    let plaintext: Vec<u8> = (0..payload_bytes).map(|i| (i % 251) as u8).collect();
    FanoutJob {
        publish_id: publish_id.to_string(),
        kind: "event".into(),
        payload: seal(
            &Key::random(),
            &plaintext,
            FanoutJob::payload_context(publish_id).as_bytes(),
        ),
        recipients: (0..recipients).map(|_| ClientId::new()).collect(),
        expires_at: None,
        step: None,
        accepted_at: None,
    }
}

/// Receives (and deletes) until `expected` messages came back or a few
/// receives in a row find nothing. Returns the bodies.
async fn drain(sqs: &aws_sdk_sqs::Client, url: &str, expected: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut empty = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while bodies.len() < expected || empty < 2 {
        assert!(Instant::now() < deadline, "draining took over a minute");
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(if bodies.len() < expected { 1 } else { 0 })
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            if bodies.len() < expected && empty > 5 {
                break;
            }
            continue;
        }
        empty = 0;
        let mut deletes = Vec::new();
        for (i, m) in messages.into_iter().enumerate() {
            bodies.push(m.body.expect("a body"));
            deletes.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.expect("a receipt handle"))
                    .build()
                    .unwrap(),
            );
        }
        let deleted = sqs
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(deletes))
            .send()
            .await
            .unwrap();
        assert!(deleted.failed.is_empty(), "{:?}", deleted.failed);
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_jobs_come_back_whole_and_once() {
    let env = aws_support::fresh_env().await;
    let queue = SqsQueue::new(env.sqs(), &env.provisioned.queue_url);

    // 25 small jobs (three batches of up to ten) and three of about 200 KiB,
    // which must travel in batches of their own under the batch size cap.
    let mut jobs: Vec<FanoutJob> = (0..25).map(|i| job(&format!("small-{i}"), 64, 3)).collect();
    for i in 0..3 {
        let big = job(&format!("large-{i}"), 150 * 1024, 20);
        let size = big.to_json().len();
        assert!(
            (190 * 1024..MAX_JOB_BYTES).contains(&size),
            "a large job is {size} bytes"
        );
        jobs.insert(i * 10 + 5, big);
    }
    let started = Instant::now();
    queue.enqueue(jobs.clone()).await.unwrap();
    let enqueue_time = started.elapsed();

    let bodies = drain(&env.sqs(), &env.provisioned.queue_url, jobs.len()).await;
    let mut received: HashMap<String, FanoutJob> = HashMap::new();
    for body in &bodies {
        let job = FanoutJob::from_json(body).expect("a job's JSON");
        let id = job.publish_id.clone();
        assert!(
            received.insert(id.clone(), job).is_none(),
            "job {id} arrived twice"
        );
    }
    assert_eq!(received.len(), jobs.len(), "jobs were lost");
    for sent in &jobs {
        assert_eq!(
            received.get(&sent.publish_id),
            Some(sent),
            "job {} changed on the way",
            sent.publish_id
        );
    }
    eprintln!(
        "enqueued {} jobs ({} KiB) in {enqueue_time:?}",
        jobs.len(),
        bodies.iter().map(String::len).sum::<usize>() / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_enqueue_sends_nothing() {
    let env = aws_support::fresh_env().await;
    let queue = SqsQueue::new(env.sqs(), &env.provisioned.queue_url);
    queue.enqueue(Vec::new()).await.unwrap();
    assert!(drain(&env.sqs(), &env.provisioned.queue_url, 0)
        .await
        .is_empty());
}

/// A job that keeps failing moves to the dead-letter queue after
/// `maxReceiveCount` receives. This checks the redrive policy infra
/// resolved from `!GetAtt FanoutDeadLetterQueue.Arn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_lands_in_the_dead_letter_queue() {
    let env = aws_support::fresh_env().await;
    let sqs = env.sqs();
    let (url, dlq) = (&env.provisioned.queue_url, &env.provisioned.dlq_url);
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    let policy: serde_json::Value = serde_json::from_str(
        attributes
            .get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
            .expect("a redrive policy"),
    )
    .unwrap();
    let max_receives = policy["maxReceiveCount"]
        .as_u64()
        .or_else(|| policy["maxReceiveCount"].as_str()?.parse().ok())
        .expect("maxReceiveCount");
    assert!(policy["deadLetterTargetArn"]
        .as_str()
        .is_some_and(|arn| arn.ends_with("fanout-dlq")));

    let doomed = job("doomed", 16, 1);
    SqsQueue::new(sqs.clone(), url.as_str())
        .enqueue(vec![doomed.clone()])
        .await
        .unwrap();
    // Each failed attempt: receive, never delete, and let it show again at
    // once (a visibility timeout of zero stands in for the function's
    // timeout passing).
    let mut receives = 0;
    for _ in 0..max_receives + 5 {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .visibility_timeout(0)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap();
        if out.messages.unwrap_or_default().is_empty() {
            break;
        }
        receives += 1;
    }
    assert_eq!(receives, max_receives, "received until the redrive");
    let dead = drain(&sqs, dlq, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(FanoutJob::from_json(&dead[0]).unwrap(), doomed);
}
