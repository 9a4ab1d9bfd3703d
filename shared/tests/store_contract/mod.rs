//! The store contract: what every `Store` adapter must do, written once.
//!
//! An adapter joins by invoking [`store_contract_tests!`] with an async
//! expression that yields a fresh, empty [`Subject`]; see `sqlite_store.rs`.

use pigeonhole::clock::Timestamp;
use pigeonhole::crypto::{seal, Key, Sealed};
use pigeonhole::domain::{ClientId, Seq};
use pigeonhole::rate_limit::{PollRateLimit, WindowLimit};
use pigeonhole::store::*;
use std::collections::HashSet;
use std::sync::Arc;

/// Tags, audiences, publish records and message expiry.
mod audiences;
pub use audiences::*;

/// A store under test, with whatever must outlive it (a temp dir, a table).
pub struct Subject {
    pub store: Arc<dyn Store>,
    pub _keep: Box<dyn std::any::Any + Send + Sync>,
}

#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store_contract_tests!(@each $make;
            registers_once_per_fingerprint,
            concurrent_registrations_create_one_client,
            touch_reports_state_and_records_contact,
            unknown_clients_are_reported,
            rate_limit_refuses_without_changing_state,
            appends_number_from_one_without_gaps,
            sealer_sees_the_sequence_number_it_is_stored_at,
            reads_after_a_cursor_with_a_limit,
            duplicate_appends_store_nothing,
            inbox_and_outbox_are_separate_sequences,
            acknowledge_moves_forward_only,
            concurrent_appends_never_expose_a_gap,
            loads_known_clients_only,
            lists_every_client_once_across_pages,
            purge_removes_only_old_acknowledged_messages,
            purge_removes_old_sent_messages,
            purge_of_many_clients_and_messages_is_complete,
            reads_stop_at_the_byte_limit_but_return_at_least_one,
            already_appended_names_the_recipients_holding_a_key,
            publish_keys_are_claimed_once_until_they_expire,
            data_is_not_shared_between_clients,
            touch_and_ack_refuse_another_generation,
            send_and_poll_buckets_are_independent,
            rotation_moves_the_client_one_generation_up,
            rotation_to_a_new_fingerprint_moves_the_lookup,
            retired_keys_are_kept_while_unacknowledged_messages_use_them,
            deletion_revokes_and_removes_everything,
            deletion_frees_the_fingerprint_and_is_reported_once,
            request_counts_allow_the_limit_per_key_and_window,
            concurrent_request_counts_allow_exactly_the_limit,
            messages_keep_their_expiry,
            purge_turns_expired_unacknowledged_messages_into_tombstones,
            appended_seqs_outlive_the_purge_of_acknowledged_messages,
            an_append_retried_after_purge_is_still_a_duplicate,
            acknowledgements_keep_their_latest_forward_moves,
            tags_are_replaced_listed_and_removed_with_the_client,
            tagged_clients_are_listed_once_across_pages,
            an_audience_of_several_tags_names_each_client_once,
            an_audience_leaves_out_later_and_deleted_clients,
            everyone_is_enumerated_once_across_pages,
            audience_pages_refuse_what_they_cannot_enumerate,
            publish_headers_and_pages_are_written_once,
            publish_headers_keep_every_audience
        );
    };
    (@each $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let subject = $make.await;
                store_contract::$name(subject.store.as_ref()).await;
            }
        )*
    };
}

/// In the future: the DynamoDB adapter stamps idempotency markers and
/// publish keys with a TTL counted from the message's time, and DynamoDB
/// (Local, too) deletes items whose TTL has passed, so a past T0 made
/// markers vanish in the middle of a test.
pub const T0: Timestamp = Timestamp(4_102_444_800_000);

pub fn client(name: &str, created_at: Timestamp) -> ClientRecord {
    ClientRecord {
        id: ClientId::new(),
        name: Some(name.to_string()),
        wrapped_key: vec![7; 60],
        created_at,
        generation: 0,
        retired_keys: vec![],
    }
}

pub async fn registered(store: &dyn Store, name: &str, created_at: Timestamp) -> ClientId {
    let fingerprint = *ClientId::new().as_uuid().as_bytes();
    let mut fp = [0u8; 32];
    fp[..16].copy_from_slice(&fingerprint);
    store
        .register_client(fp, client(name, created_at))
        .await
        .unwrap()
        .client
        .id
}

fn dedup(key: &str) -> Dedup {
    Dedup {
        key: key.to_string(),
        digest: [key.len() as u8; 32],
    }
}

/// A sealer whose message body is the sequence number, so tests can check
/// that the stored message was built for the position it sits at.
fn sealer(kind: &str) -> Sealer {
    sealer_under(kind, 0)
}

/// [`sealer`], saying its messages are sealed under the personal key of
/// credential generation `key_generation`.
fn sealer_under(kind: &str, key_generation: u32) -> Sealer {
    let kind = kind.to_string();
    let key = Key::from_bytes([3; 32]);
    Arc::new(move |seq: Seq| {
        Ok(NewMessage {
            kind: kind.clone(),
            body: seal(&key, &seq.to_be_bytes(), b""),
            created_at: T0.plus_millis(seq as i64),
            key_generation,
            expires_at: None,
        })
    })
}

/// A charge to the poll bucket at `per_minute`.
fn polls(per_minute: u32) -> Option<RateCharge> {
    Some(RateCharge {
        bucket: Bucket::Poll,
        limit: PollRateLimit::per_minute(per_minute).unwrap(),
    })
}

/// A charge to the send bucket at `per_minute`.
fn sends(per_minute: u32) -> Option<RateCharge> {
    Some(RateCharge {
        bucket: Bucket::Send,
        limit: PollRateLimit::per_minute(per_minute).unwrap(),
    })
}

fn seq_in_body(body: &Sealed) -> Seq {
    let bytes = pigeonhole::crypto::open(&Key::from_bytes([3; 32]), body, b"").unwrap();
    Seq::from_be_bytes(bytes.try_into().unwrap())
}

async fn append(store: &dyn Store, id: ClientId, key: &str) -> Appended {
    store
        .append(Mailbox::Inbox, id, dedup(key), sealer("event"))
        .await
        .unwrap()
}

fn known(touch: Touch) -> ClientState {
    match touch {
        Touch::Known(state) => state,
        other => panic!("expected a known client, got {other:?}"),
    }
}

pub async fn registers_once_per_fingerprint(store: &dyn Store) {
    let first = client("first", T0);
    let created = store.register_client([1; 32], first.clone()).await.unwrap();
    assert_eq!(
        created,
        Registration {
            client: first.clone(),
            created: true
        }
    );

    let again = store
        .register_client([1; 32], client("second", T0))
        .await
        .unwrap();
    assert_eq!(
        again,
        Registration {
            client: first,
            created: false
        }
    );

    let other = store
        .register_client([2; 32], client("other", T0))
        .await
        .unwrap();
    assert!(other.created);
}

pub async fn concurrent_registrations_create_one_client(store: &dyn Store) {
    let attempts = (0..16).map(|i| store.register_client([9; 32], client(&format!("c{i}"), T0)));
    let results: Vec<Registration> = futures_join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ids: HashSet<ClientId> = results.iter().map(|r| r.client.id).collect();
    assert_eq!(ids.len(), 1, "one fingerprint must map to one client");
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
}

pub async fn touch_reports_state_and_records_contact(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    let state = known(
        store
            .touch_client(id, 0, T0.plus_millis(5), None)
            .await
            .unwrap(),
    );
    assert_eq!((state.acked, state.head), (0, 0));
    assert_eq!(state.record.id, id);
    assert_eq!(state.record.name.as_deref(), Some("a"));
    assert_eq!(state.record.wrapped_key, vec![7; 60]);

    append(store, id, "m1").await;
    let state = known(
        store
            .touch_client(id, 0, T0.plus_millis(9), None)
            .await
            .unwrap(),
    );
    assert_eq!(state.head, 1);

    let page = store.list_clients(10, None).await.unwrap().unwrap();
    assert_eq!(page.clients[0].last_seen_at, Some(T0.plus_millis(9)));
}

pub async fn unknown_clients_are_reported(store: &dyn Store) {
    let stranger = ClientId::new();
    assert_eq!(
        store.touch_client(stranger, 0, T0, None).await.unwrap(),
        Touch::UnknownClient
    );
    assert_eq!(append(store, stranger, "k").await, Appended::UnknownClient);
    assert_eq!(
        store
            .append(Mailbox::Outbox, stranger, dedup("k"), sealer("x"))
            .await
            .unwrap(),
        Appended::UnknownClient
    );
    assert_eq!(
        store.acknowledge(stranger, 0, 0, T0).await.unwrap(),
        AckOutcome::UnknownClient
    );
    assert!(store
        .read(Mailbox::Inbox, stranger, 0, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn rate_limit_refuses_without_changing_state(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    let limit = polls(2);
    for i in 0..2 {
        let touch = store
            .touch_client(id, 0, T0.plus_millis(i), limit)
            .await
            .unwrap();
        assert!(
            matches!(touch, Touch::Known(_)),
            "poll {i} is within the limit"
        );
    }
    match store
        .touch_client(id, 0, T0.plus_millis(2), limit)
        .await
        .unwrap()
    {
        Touch::RateLimited { retry_after } => assert_eq!(retry_after.as_secs(), 30),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let page = store.list_clients(10, None).await.unwrap().unwrap();
    assert_eq!(
        page.clients[0].last_seen_at,
        Some(T0.plus_millis(1)),
        "a refused poll is not recorded"
    );
    // Half a minute later one slot has refilled.
    let later = store
        .touch_client(id, 0, T0.plus_millis(30_002), limit)
        .await
        .unwrap();
    assert!(matches!(later, Touch::Known(_)));
    // Contacts without a limit (sends, acks) are never refused.
    assert!(matches!(
        store
            .touch_client(id, 0, T0.plus_millis(30_003), None)
            .await
            .unwrap(),
        Touch::Known(_)
    ));
}

pub async fn appends_number_from_one_without_gaps(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    for expected in 1..=5 {
        assert_eq!(
            append(store, id, &format!("m{expected}")).await,
            Appended::Stored { seq: expected }
        );
    }
    let all = store.read(Mailbox::Inbox, id, 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        known(store.touch_client(id, 0, T0, None).await.unwrap()).head,
        5
    );
}

pub async fn sealer_sees_the_sequence_number_it_is_stored_at(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    for i in 0..3 {
        append(store, id, &format!("m{i}")).await;
    }
    for m in store.read(Mailbox::Inbox, id, 0, 10).await.unwrap() {
        assert_eq!(seq_in_body(&m.body), m.seq);
        assert_eq!(m.created_at, T0.plus_millis(m.seq as i64));
        assert_eq!(m.kind, "event");
    }
}

pub async fn reads_after_a_cursor_with_a_limit(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    for i in 0..10 {
        append(store, id, &format!("m{i}")).await;
    }
    let seqs = |ms: Vec<StoredMessage>| ms.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.read(Mailbox::Inbox, id, 3, 4).await.unwrap()),
        vec![4, 5, 6, 7]
    );
    assert_eq!(
        seqs(store.read(Mailbox::Inbox, id, 8, 100).await.unwrap()),
        vec![9, 10]
    );
    assert!(store
        .read(Mailbox::Inbox, id, 10, 100)
        .await
        .unwrap()
        .is_empty());
}

pub async fn duplicate_appends_store_nothing(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    assert_eq!(
        append(store, id, "publish:1").await,
        Appended::Stored { seq: 1 }
    );
    assert_eq!(
        append(store, id, "publish:2").await,
        Appended::Stored { seq: 2 }
    );
    assert_eq!(
        append(store, id, "publish:1").await,
        Appended::Duplicate {
            seq: 1,
            same_content: true
        }
    );
    let different = Dedup {
        key: "publish:2".into(),
        digest: [0xEE; 32],
    };
    assert_eq!(
        store
            .append(Mailbox::Inbox, id, different, sealer("event"))
            .await
            .unwrap(),
        Appended::Duplicate {
            seq: 2,
            same_content: false
        }
    );
    assert_eq!(
        store.read(Mailbox::Inbox, id, 0, 10).await.unwrap().len(),
        2
    );
    assert_eq!(
        known(store.touch_client(id, 0, T0, None).await.unwrap()).head,
        2
    );
}

pub async fn inbox_and_outbox_are_separate_sequences(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    append(store, id, "in1").await;
    append(store, id, "in2").await;
    let out = store
        .append(Mailbox::Outbox, id, dedup("in1"), sealer("note"))
        .await
        .unwrap();
    assert_eq!(
        out,
        Appended::Stored { seq: 1 },
        "outbox numbering and dedup keys are its own"
    );
    let outbox = store.read(Mailbox::Outbox, id, 0, 10).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].kind, "note");
    assert_eq!(
        store.read(Mailbox::Inbox, id, 0, 10).await.unwrap().len(),
        2
    );
    assert_eq!(
        known(store.touch_client(id, 0, T0, None).await.unwrap()).head,
        2,
        "head counts the inbox only"
    );
}

pub async fn acknowledge_moves_forward_only(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    for i in 0..3 {
        append(store, id, &format!("m{i}")).await;
    }
    assert_eq!(
        store.acknowledge(id, 0, 2, T0).await.unwrap(),
        AckOutcome::Acked { cursor: 2 }
    );
    assert_eq!(
        store.acknowledge(id, 0, 1, T0).await.unwrap(),
        AckOutcome::Acked { cursor: 2 }
    );
    assert_eq!(
        store.acknowledge(id, 0, 0, T0).await.unwrap(),
        AckOutcome::Acked { cursor: 2 }
    );
    assert_eq!(
        store.acknowledge(id, 0, 4, T0).await.unwrap(),
        AckOutcome::BeyondHead { head: 3 }
    );
    assert_eq!(
        known(store.touch_client(id, 0, T0, None).await.unwrap()).acked,
        2
    );
    assert_eq!(
        store
            .acknowledge(id, 0, 3, T0.plus_millis(50))
            .await
            .unwrap(),
        AckOutcome::Acked { cursor: 3 }
    );
    let page = store.list_clients(10, None).await.unwrap().unwrap();
    assert_eq!(
        page.clients[0].last_seen_at,
        Some(T0.plus_millis(50)),
        "an ack is a contact"
    );
}

/// The guarantee the whole design rests on: while writers race, a reader
/// that moves its cursor to the last id it saw never skips a message.
pub async fn concurrent_appends_never_expose_a_gap(store: &dyn Store) {
    const WRITERS: usize = 6;
    const EACH: usize = 20;
    let id = registered(store, "a", T0).await;
    let writers = async {
        futures_join_all((0..WRITERS).map(|w| async move {
            for n in 0..EACH {
                let appended = append(store, id, &format!("w{w}-{n}")).await;
                assert!(matches!(appended, Appended::Stored { .. }), "{appended:?}");
            }
        }))
        .await;
    };
    let reader = async {
        let mut cursor = 0;
        let mut seen = Vec::new();
        while seen.len() < WRITERS * EACH {
            for m in store.read(Mailbox::Inbox, id, cursor, 7).await.unwrap() {
                assert_eq!(
                    m.seq,
                    cursor + 1,
                    "a reader at {cursor} was shown {}",
                    m.seq
                );
                cursor = m.seq;
                seen.push(m.seq);
            }
            tokio::task::yield_now().await;
        }
        seen
    };
    let ((), seen) = tokio::join!(writers, reader);
    assert_eq!(seen, (1..=(WRITERS * EACH) as Seq).collect::<Vec<_>>());
}

pub async fn loads_known_clients_only(store: &dyn Store) {
    let a = registered(store, "a", T0).await;
    let b = registered(store, "b", T0).await;
    let loaded = store.load_clients(&[a, ClientId::new(), b]).await.unwrap();
    let ids: HashSet<ClientId> = loaded.iter().map(|c| c.id).collect();
    assert_eq!(ids, HashSet::from([a, b]));
    assert!(loaded.iter().all(|c| c.wrapped_key == vec![7; 60]));
}

/// Paging visits every client exactly once. The order is the adapter's own
/// (creation order in SQLite, storage order in a DynamoDB scan), so callers
/// that want an order sort.
pub async fn lists_every_client_once_across_pages(store: &dyn Store) {
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(registered(store, &format!("c{i}"), T0.plus_millis(i)).await);
    }
    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_clients(2, token.as_deref())
            .await
            .unwrap()
            .unwrap();
        pages += 1;
        assert!(page.clients.len() <= 2);
        listed.extend(page.clients.iter().map(|c| c.id));
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not terminate");
    }
    let unique: HashSet<ClientId> = listed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a client was listed twice: {listed:?}"
    );
    assert_eq!(unique, expected.iter().copied().collect::<HashSet<_>>());
    let all = store.list_clients(10, None).await.unwrap().unwrap();
    assert_eq!(all.next, None, "no token when nothing follows");
    let c0 = all
        .clients
        .iter()
        .find(|c| c.id == expected[0])
        .expect("c0 listed");
    assert_eq!(c0.name.as_deref(), Some("c0"));
    assert_eq!(c0.created_at, T0);
    assert_eq!(c0.last_seen_at, None);
    assert_eq!(
        store.list_clients(2, Some("garbage!")).await.unwrap(),
        Err(BadPageToken)
    );
}

/// Cutoffs that remove acknowledged inbox messages created before
/// `acked_before` and nothing else.
fn inbox_cutoffs(acked_before: Timestamp) -> Cutoffs {
    Cutoffs {
        acked_before,
        sent_before: Timestamp(0),
        keys_before: Timestamp(0),
        now: Timestamp(0),
        publishes_before: Timestamp(0),
    }
}

fn seqs_of(messages: Vec<StoredMessage>) -> Vec<Seq> {
    messages.iter().map(|m| m.seq).collect()
}

pub async fn purge_removes_only_old_acknowledged_messages(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    for i in 0..4 {
        append(store, id, &format!("m{i}")).await; // created at T0+1 .. T0+4
    }
    store.acknowledge(id, 0, 3, T0).await.unwrap();
    // Messages 1 and 2 are acknowledged and older than the cutoff; 3 is
    // acknowledged but newer; 4 is not acknowledged.
    let purged = store.purge(inbox_cutoffs(T0.plus_millis(3))).await.unwrap();
    assert_eq!((purged.inbox, purged.outbox, purged.finished), (2, 0, true));
    let left = store.read(Mailbox::Inbox, id, 0, 10).await.unwrap();
    assert_eq!(seqs_of(left), vec![3, 4]);
    let purged = store
        .purge(inbox_cutoffs(T0.plus_millis(1_000)))
        .await
        .unwrap();
    assert_eq!(purged.inbox, 1);
    let left = store.read(Mailbox::Inbox, id, 0, 10).await.unwrap();
    assert_eq!(
        seqs_of(left),
        vec![4],
        "unacknowledged messages are never purged"
    );
    assert_eq!(
        append(store, id, "m5").await,
        Appended::Stored { seq: 5 },
        "numbering continues after a purge"
    );
    store.acknowledge(id, 0, 5, T0).await.unwrap();
    let purged = store
        .purge(inbox_cutoffs(T0.plus_millis(1_000)))
        .await
        .unwrap();
    assert_eq!(purged.inbox, 2, "a later purge picks up where one stopped");
    assert!(store
        .read(Mailbox::Inbox, id, 0, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn purge_removes_old_sent_messages(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    for i in 0..3 {
        store
            .append(Mailbox::Outbox, id, dedup(&format!("s{i}")), sealer("note"))
            .await
            .unwrap(); // created at T0+1 .. T0+3
    }
    append(store, id, "in").await; // unacknowledged, created at T0+1
    let purged = store
        .purge(Cutoffs {
            acked_before: T0.plus_millis(1_000),
            sent_before: T0.plus_millis(3),
            keys_before: Timestamp(0),
            now: Timestamp(0),
            publishes_before: Timestamp(0),
        })
        .await
        .unwrap();
    assert_eq!((purged.inbox, purged.outbox), (0, 2));
    let left = store.read(Mailbox::Outbox, id, 0, 10).await.unwrap();
    assert_eq!(seqs_of(left), vec![3]);
    assert_eq!(
        store.read(Mailbox::Inbox, id, 0, 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        store
            .append(Mailbox::Outbox, id, dedup("s9"), sealer("note"))
            .await
            .unwrap(),
        Appended::Stored { seq: 4 }
    );
}

pub async fn purge_of_many_clients_and_messages_is_complete(store: &dyn Store) {
    // Several clients, each with more messages than one delete batch.
    let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
    let ids: Vec<ClientId> =
        futures_join_all(names.iter().map(|name| registered(store, name, T0))).await;
    for id in &ids[..2] {
        for i in 0..60 {
            append(store, *id, &format!("m{i}")).await;
        }
        store.acknowledge(*id, 0, 55, T0).await.unwrap();
    }
    let purged = store
        .purge(inbox_cutoffs(T0.plus_millis(1_000)))
        .await
        .unwrap();
    assert_eq!(purged.inbox, 110);
    assert!(purged.finished);
    for id in &ids[..2] {
        let left = store.read(Mailbox::Inbox, *id, 0, 100).await.unwrap();
        assert_eq!(seqs_of(left), (56..=60).collect::<Vec<_>>());
    }
}

pub async fn reads_stop_at_the_byte_limit_but_return_at_least_one(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    for i in 0..5 {
        append(store, id, &format!("m{i}")).await; // 8-byte bodies
    }
    let page = |count, bytes| store.read_page(Mailbox::Inbox, id, 0, ReadLimit { count, bytes });
    assert_eq!(seqs_of(page(10, 24).await.unwrap()), vec![1, 2, 3]);
    assert_eq!(seqs_of(page(2, 24).await.unwrap()), vec![1, 2]);
    assert_eq!(
        seqs_of(page(10, 1).await.unwrap()),
        vec![1],
        "one message even when it alone is over the limit"
    );
    assert_eq!(seqs_of(page(10, usize::MAX).await.unwrap()).len(), 5);
}

pub async fn already_appended_names_the_recipients_holding_a_key(store: &dyn Store) {
    let a = registered(store, "a", T0).await;
    let b = registered(store, "b", T0).await;
    let stranger = ClientId::new();
    append(store, a, "publish:p1").await;
    append(store, b, "publish:p2").await;
    let found = store
        .already_appended(Mailbox::Inbox, &[a, b, stranger], "publish:p1")
        .await
        .unwrap();
    assert_eq!(found, HashSet::from([a]));
    let found = store
        .already_appended(Mailbox::Outbox, &[a, b], "publish:p1")
        .await
        .unwrap();
    assert!(found.is_empty(), "the outbox's keys are its own");
    // More ids than one batched read takes.
    let many: Vec<ClientId> = (0..250).map(|_| ClientId::new()).chain([b]).collect();
    let found = store
        .already_appended(Mailbox::Inbox, &many, "publish:p2")
        .await
        .unwrap();
    assert_eq!(found, HashSet::from([b]));
}

pub async fn publish_keys_are_claimed_once_until_they_expire(store: &dyn Store) {
    let record = |id: &str, at: Timestamp| PublishRecord {
        publish_id: id.to_string(),
        recipients: 3,
        digest: [id.len() as u8; 32],
        created_at: at,
    };
    let key = format!("key-{}", ClientId::new());
    let first = record("first", T0);
    assert_eq!(
        store
            .claim_publish_key(&key, first.clone(), Timestamp(0))
            .await
            .unwrap(),
        KeyClaim::Claimed
    );
    assert_eq!(
        store
            .claim_publish_key(&key, record("second", T0), Timestamp(0))
            .await
            .unwrap(),
        KeyClaim::Held {
            record: first.clone(),
            completed: false
        }
    );
    store.complete_publish_key(&key).await.unwrap();
    assert_eq!(
        store
            .claim_publish_key(&key, record("third", T0), Timestamp(0))
            .await
            .unwrap(),
        KeyClaim::Held {
            record: first,
            completed: true
        }
    );
    // Once the record is older than the window, the key is free again.
    let later = record("later", T0.plus_millis(10_000));
    assert_eq!(
        store
            .claim_publish_key(&key, later.clone(), T0.plus_millis(1))
            .await
            .unwrap(),
        KeyClaim::Claimed
    );
    assert_eq!(
        store
            .claim_publish_key(&key, record("again", T0), T0.plus_millis(1))
            .await
            .unwrap(),
        KeyClaim::Held {
            record: later,
            completed: false
        }
    );
}

pub async fn data_is_not_shared_between_clients(store: &dyn Store) {
    let a = registered(store, "a", T0).await;
    let b = registered(store, "b", T0).await;
    append(store, a, "same-key").await;
    assert_eq!(
        append(store, b, "same-key").await,
        Appended::Stored { seq: 1 }
    );
    store.acknowledge(a, 0, 1, T0).await.unwrap();
    assert_eq!(
        known(store.touch_client(b, 0, T0, None).await.unwrap()).acked,
        0
    );
    assert_eq!(store.read(Mailbox::Inbox, b, 0, 10).await.unwrap().len(), 1);
}

fn fingerprint(byte: u8) -> [u8; 32] {
    let mut fp = *ClientId::new().as_uuid().as_bytes();
    fp[0] = byte;
    let mut out = [byte; 32];
    out[..16].copy_from_slice(&fp);
    out
}

fn rotation(id: ClientId, from: u32, key: u8, now: Timestamp) -> Rotation {
    Rotation {
        id,
        from_generation: from,
        wrapped_key: vec![key; 60],
        fingerprint: None,
        now,
        keep_retired_since: now,
    }
}

fn rotated(outcome: Rotated) -> ClientRecord {
    match outcome {
        Rotated::Rotated(record) => record,
        other => panic!("expected a rotation, got {other:?}"),
    }
}

fn retired_generations(record: &ClientRecord) -> Vec<u32> {
    let mut generations: Vec<u32> = record.retired_keys.iter().map(|k| k.generation).collect();
    generations.sort();
    generations
}

pub async fn touch_and_ack_refuse_another_generation(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    append(store, id, "m1").await;
    for generation in [1, 2, u32::MAX] {
        assert_eq!(
            store.touch_client(id, generation, T0, None).await.unwrap(),
            Touch::UnknownClient,
            "generation {generation}"
        );
        assert_eq!(
            store
                .touch_client(id, generation, T0, polls(60))
                .await
                .unwrap(),
            Touch::UnknownClient,
            "generation {generation}, charged"
        );
        assert_eq!(
            store.acknowledge(id, generation, 1, T0).await.unwrap(),
            AckOutcome::UnknownClient,
            "generation {generation}"
        );
    }
    let state = known(store.touch_client(id, 0, T0, polls(60)).await.unwrap());
    assert_eq!(
        (state.acked, state.record.generation),
        (0, 0),
        "refused acks moved nothing"
    );
    let page = store.list_clients(10, None).await.unwrap().unwrap();
    assert_eq!(page.clients[0].last_seen_at, Some(T0));
}

pub async fn send_and_poll_buckets_are_independent(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    for i in 0..2 {
        let touch = store.touch_client(id, 0, T0, polls(2)).await.unwrap();
        assert!(matches!(touch, Touch::Known(_)), "poll {i}");
    }
    assert!(matches!(
        store.touch_client(id, 0, T0, polls(2)).await.unwrap(),
        Touch::RateLimited { .. }
    ));
    for i in 0..3 {
        let touch = store.touch_client(id, 0, T0, sends(3)).await.unwrap();
        assert!(
            matches!(touch, Touch::Known(_)),
            "send {i}: polls do not drain the send bucket"
        );
    }
    match store.touch_client(id, 0, T0, sends(3)).await.unwrap() {
        Touch::RateLimited { retry_after } => assert_eq!(retry_after.as_secs(), 20),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Half a minute on, one poll slot has refilled, whatever sends did.
    assert!(matches!(
        store
            .touch_client(id, 0, T0.plus_millis(30_000), polls(2))
            .await
            .unwrap(),
        Touch::Known(_)
    ));
}

pub async fn rotation_moves_the_client_one_generation_up(store: &dyn Store) {
    let fp = fingerprint(1);
    let original = client("a", T0);
    let id = original.id;
    store.register_client(fp, original.clone()).await.unwrap();
    append(store, id, "m1").await;

    let now = T0.plus_millis(100);
    let record = rotated(store.rotate_client(rotation(id, 0, 8, now)).await.unwrap());
    assert_eq!(
        record,
        ClientRecord {
            wrapped_key: vec![8; 60],
            generation: 1,
            retired_keys: vec![RetiredKey {
                generation: 0,
                wrapped_key: vec![7; 60],
                retired_at: now,
            }],
            ..original
        }
    );
    assert_eq!(record.wrapped_key_of(0), Some(&[7u8; 60][..]));

    // The old generation's tokens are refused; the new one's accepted.
    assert_eq!(
        store.touch_client(id, 0, now, None).await.unwrap(),
        Touch::UnknownClient
    );
    assert_eq!(
        store.acknowledge(id, 0, 1, now).await.unwrap(),
        AckOutcome::UnknownClient
    );
    let state = known(store.touch_client(id, 1, now, polls(60)).await.unwrap());
    assert_eq!(state.record, record);
    assert_eq!(state.head, 1, "messages stay");
    assert_eq!(
        store.acknowledge(id, 1, 1, now).await.unwrap(),
        AckOutcome::Acked { cursor: 1 }
    );

    // A second rotation from the old generation (a replay, or a race lost
    // to another rotation) changes nothing.
    assert_eq!(
        store.rotate_client(rotation(id, 0, 9, now)).await.unwrap(),
        Rotated::Stale
    );
    assert_eq!(
        store.rotate_client(rotation(id, 5, 9, now)).await.unwrap(),
        Rotated::Stale
    );
    assert_eq!(
        store
            .rotate_client(rotation(ClientId::new(), 0, 9, now))
            .await
            .unwrap(),
        Rotated::Stale,
        "an unknown client"
    );

    // Re-registering with the fingerprint returns the rotated record.
    let again = store.register_client(fp, client("b", now)).await.unwrap();
    assert_eq!(
        again,
        Registration {
            client: record.clone(),
            created: false
        }
    );
    assert_eq!(store.load_clients(&[id]).await.unwrap(), vec![record]);
}

pub async fn rotation_to_a_new_fingerprint_moves_the_lookup(store: &dyn Store) {
    let (old_fp, new_fp) = (fingerprint(2), fingerprint(3));
    let first = client("a", T0);
    let id = first.id;
    store.register_client(old_fp, first).await.unwrap();
    let now = T0.plus_millis(100);
    let moved = rotated(
        store
            .rotate_client(Rotation {
                fingerprint: Some(new_fp),
                ..rotation(id, 0, 8, now)
            })
            .await
            .unwrap(),
    );
    assert_eq!((moved.id, moved.generation), (id, 1));

    let found = store
        .register_client(new_fp, client("x", now))
        .await
        .unwrap();
    assert_eq!(
        found,
        Registration {
            client: moved.clone(),
            created: false
        },
        "the new fingerprint finds the client"
    );
    let fresh = client("y", now);
    let again = store.register_client(old_fp, fresh.clone()).await.unwrap();
    assert_eq!(
        again,
        Registration {
            client: fresh.clone(),
            created: true
        },
        "the old fingerprint registers a new client"
    );

    // Another client's fingerprint cannot be taken, and nothing changes.
    assert_eq!(
        store
            .rotate_client(Rotation {
                fingerprint: Some(old_fp),
                ..rotation(id, 1, 9, now)
            })
            .await
            .unwrap(),
        Rotated::FingerprintTaken
    );
    let state = known(store.touch_client(id, 1, now, None).await.unwrap());
    assert_eq!(state.record, moved);
    assert_eq!(
        store
            .register_client(new_fp, client("z", now))
            .await
            .unwrap()
            .client
            .id,
        id
    );
    // Rotating to the fingerprint a client already has is a plain rotation.
    let same = rotated(
        store
            .rotate_client(Rotation {
                fingerprint: Some(new_fp),
                ..rotation(id, 1, 10, now)
            })
            .await
            .unwrap(),
    );
    assert_eq!(same.generation, 2);
    let found = store
        .register_client(new_fp, client("v", now))
        .await
        .unwrap();
    assert_eq!((found.client.id, found.created), (id, false));
    assert_eq!(found.client.generation, 2);
    assert_eq!(
        store
            .register_client(old_fp, client("u", now))
            .await
            .unwrap()
            .client
            .id,
        fresh.id
    );
}

pub async fn retired_keys_are_kept_while_unacknowledged_messages_use_them(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    let at = |ms: i64| T0.plus_millis(ms);
    let append_under = |key: &str, generation: u32| {
        store.append(
            Mailbox::Inbox,
            id,
            dedup(key),
            sealer_under("event", generation),
        )
    };
    append_under("m1", 0).await.unwrap();
    append_under("m2", 0).await.unwrap();
    // A rotation always keeps the key it retires.
    let r1 = rotated(
        store
            .rotate_client(rotation(id, 0, 11, at(100)))
            .await
            .unwrap(),
    );
    assert_eq!(retired_generations(&r1), vec![0]);
    append_under("m3", 1).await.unwrap();
    let stored = store.read(Mailbox::Inbox, id, 0, 10).await.unwrap();
    assert_eq!(
        stored.iter().map(|m| m.key_generation).collect::<Vec<_>>(),
        vec![0, 0, 1],
        "reads say which key sealed each message"
    );

    // Generation 0's key is past the grace period, but messages 1 and 2
    // (unacknowledged) are sealed under it.
    let r2 = rotated(
        store
            .rotate_client(Rotation {
                keep_retired_since: at(150),
                ..rotation(id, 1, 12, at(200))
            })
            .await
            .unwrap(),
    );
    assert_eq!(retired_generations(&r2), vec![0, 1]);
    assert_eq!(r2.wrapped_key_of(0), Some(&[7u8; 60][..]));
    assert_eq!(r2.wrapped_key_of(1), Some(&[11u8; 60][..]));

    // Once they are acknowledged, generation 0's key goes; generation 1's
    // stays for message 3.
    store.acknowledge(id, 2, 2, at(250)).await.unwrap();
    let r3 = rotated(
        store
            .rotate_client(Rotation {
                keep_retired_since: at(250),
                ..rotation(id, 2, 13, at(300))
            })
            .await
            .unwrap(),
    );
    assert_eq!(retired_generations(&r3), vec![1, 2]);
    assert_eq!(r3.wrapped_key_of(0), None);

    // Everything acknowledged and old: only the key retired now is kept.
    store.acknowledge(id, 3, 3, at(350)).await.unwrap();
    let r4 = rotated(
        store
            .rotate_client(Rotation {
                keep_retired_since: at(350),
                ..rotation(id, 3, 14, at(400))
            })
            .await
            .unwrap(),
    );
    assert_eq!(retired_generations(&r4), vec![3]);

    // A key retired at or after `keep_retired_since` is kept regardless.
    let r5 = rotated(
        store
            .rotate_client(Rotation {
                keep_retired_since: at(400),
                ..rotation(id, 4, 15, at(500))
            })
            .await
            .unwrap(),
    );
    assert_eq!(retired_generations(&r5), vec![3, 4]);
    let state = known(store.touch_client(id, 5, at(500), None).await.unwrap());
    assert_eq!(state.record, r5, "the store keeps what it reported");
}

pub async fn deletion_revokes_and_removes_everything(store: &dyn Store) {
    let fp = fingerprint(5);
    let doomed = client("doomed", T0);
    let id = doomed.id;
    store.register_client(fp, doomed).await.unwrap();
    let kept = registered(store, "kept", T0).await;
    // More than a few delete batches' worth.
    for i in 0..60 {
        append(store, id, &format!("in{i}")).await;
    }
    for i in 0..30 {
        store
            .append(
                Mailbox::Outbox,
                id,
                dedup(&format!("out{i}")),
                sealer("note"),
            )
            .await
            .unwrap();
    }
    append(store, kept, "in0").await;
    store.acknowledge(id, 0, 10, T0).await.unwrap();

    assert_eq!(store.delete_client(id).await.unwrap(), Deleted::Deleted);

    assert_eq!(
        store.touch_client(id, 0, T0, None).await.unwrap(),
        Touch::UnknownClient
    );
    assert_eq!(
        store.touch_client(id, 0, T0, polls(60)).await.unwrap(),
        Touch::UnknownClient
    );
    assert_eq!(
        store.acknowledge(id, 0, 20, T0).await.unwrap(),
        AckOutcome::UnknownClient
    );
    assert_eq!(
        store.rotate_client(rotation(id, 0, 8, T0)).await.unwrap(),
        Rotated::Stale
    );
    assert_eq!(append(store, id, "late").await, Appended::UnknownClient);
    for mailbox in [Mailbox::Inbox, Mailbox::Outbox] {
        assert!(
            store.read(mailbox, id, 0, 100).await.unwrap().is_empty(),
            "{mailbox:?} is emptied"
        );
    }
    let listed: Vec<ClientId> = store
        .list_clients(100, None)
        .await
        .unwrap()
        .unwrap()
        .clients
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, vec![kept]);
    assert_eq!(
        store
            .load_clients(&[id, kept])
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![kept]
    );
    // Nobody else's data went with it, and a purge finds nothing to do.
    assert_eq!(
        store.read(Mailbox::Inbox, kept, 0, 10).await.unwrap().len(),
        1
    );
    let purged = store
        .purge(inbox_cutoffs(T0.plus_millis(1_000)))
        .await
        .unwrap();
    assert_eq!((purged.inbox, purged.finished), (0, true));
    assert!(store
        .read(Mailbox::Inbox, id, 0, 100)
        .await
        .unwrap()
        .is_empty());
}

pub async fn deletion_frees_the_fingerprint_and_is_reported_once(store: &dyn Store) {
    let fp = fingerprint(6);
    let first = client("first", T0);
    store.register_client(fp, first.clone()).await.unwrap();
    assert_eq!(
        store.delete_client(first.id).await.unwrap(),
        Deleted::Deleted
    );
    assert_eq!(
        store.delete_client(first.id).await.unwrap(),
        Deleted::Unknown,
        "a second delete"
    );
    assert_eq!(
        store.delete_client(ClientId::new()).await.unwrap(),
        Deleted::Unknown,
        "an id never registered"
    );
    let second = client("second", T0.plus_millis(1));
    assert_eq!(
        store.register_client(fp, second.clone()).await.unwrap(),
        Registration {
            client: second.clone(),
            created: true
        },
        "the fingerprint registers a new client"
    );
    assert_eq!(
        store
            .register_client(fp, client("third", T0))
            .await
            .unwrap()
            .client,
        second
    );
    assert!(matches!(
        store.touch_client(second.id, 0, T0, None).await.unwrap(),
        Touch::Known(_)
    ));
    // A client moved to a new fingerprint frees that one when deleted.
    let moved_fp = fingerprint(7);
    rotated(
        store
            .rotate_client(Rotation {
                fingerprint: Some(moved_fp),
                ..rotation(second.id, 0, 8, T0)
            })
            .await
            .unwrap(),
    );
    assert_eq!(
        store.delete_client(second.id).await.unwrap(),
        Deleted::Deleted
    );
    for fp in [fp, moved_fp] {
        let fresh = client("fresh", T0);
        assert_eq!(
            store.register_client(fp, fresh.clone()).await.unwrap(),
            Registration {
                client: fresh,
                created: true
            }
        );
    }
}

pub async fn request_counts_allow_the_limit_per_key_and_window(store: &dyn Store) {
    let limit = WindowLimit::per_minute(3).unwrap();
    let now = T0.plus_millis(1_500);
    for i in 0..3 {
        assert_eq!(
            store
                .count_request("203.0.113.7", limit, now.plus_millis(i))
                .await
                .unwrap(),
            Counted::Allowed,
            "request {i}"
        );
    }
    for i in 3..5 {
        let counted = store
            .count_request("203.0.113.7", limit, now.plus_millis(i))
            .await
            .unwrap();
        let Counted::Full { retry_after } = counted else {
            panic!("request {i} is over the limit: {counted:?}")
        };
        assert_eq!(retry_after, limit.retry_after(now.plus_millis(i)));
        assert!(retry_after.as_secs() >= 1 && retry_after.as_secs() <= 60);
    }
    assert_eq!(
        store
            .count_request("2001:db8::1", limit, now)
            .await
            .unwrap(),
        Counted::Allowed,
        "keys are counted apart"
    );
    // The next window starts afresh.
    let next = now.plus_millis(60_000);
    assert_eq!(limit.window(next), limit.window(now) + 1);
    for i in 0..3 {
        assert_eq!(
            store
                .count_request("203.0.113.7", limit, next)
                .await
                .unwrap(),
            Counted::Allowed,
            "request {i} of the next window"
        );
    }
    assert!(matches!(
        store
            .count_request("203.0.113.7", limit, next)
            .await
            .unwrap(),
        Counted::Full { .. }
    ));
}

pub async fn concurrent_request_counts_allow_exactly_the_limit(store: &dyn Store) {
    let limit = WindowLimit::per_minute(5).unwrap();
    let counts = (0..20).map(|_| store.count_request("198.51.100.1", limit, T0));
    let results: Vec<Counted> = futures_join_all(counts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|c| **c == Counted::Allowed).count(),
        5,
        "{results:?}"
    );
}

/// Runs futures concurrently on this task (no extra dependency needed).
pub async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => results[i] = Some(out),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results
        .into_iter()
        .map(|r| r.expect("every future finished"))
        .collect()
}
