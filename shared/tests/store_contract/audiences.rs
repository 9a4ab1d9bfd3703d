//! The contract of what publishing to tags and everyone, delivery status
//! and message expiry need from a store: expiring messages and their
//! tombstones, idempotency keys that outlive cleanup, the acknowledgement
//! history, tags, audience enumeration and publish records.

use super::*;
use std::collections::HashMap;

/// [`sealer`], for messages that expire at `expires_at`.
pub fn expiring(expires_at: Option<Timestamp>) -> Sealer {
    let key = Key::from_bytes([3; 32]);
    Arc::new(move |seq: Seq| {
        Ok(NewMessage {
            kind: "event".to_string(),
            body: seal(&key, &seq.to_be_bytes(), b""),
            created_at: T0.plus_millis(seq as i64),
            key_generation: 0,
            expires_at,
        })
    })
}

pub async fn append_expiring(
    store: &dyn Store,
    id: ClientId,
    key: &str,
    expires_at: Option<Timestamp>,
) -> Appended {
    store
        .append(Mailbox::Inbox, id, dedup(key), expiring(expires_at))
        .await
        .unwrap()
}

/// Cutoffs that turn messages expired by `now` into tombstones and remove
/// acknowledged messages created before `acked_before`, and nothing else.
fn expiry_cutoffs(now: Timestamp, acked_before: Timestamp) -> Cutoffs {
    Cutoffs {
        now,
        ..inbox_cutoffs(acked_before)
    }
}

fn is_tombstone(message: &StoredMessage) -> bool {
    message.kind.is_empty() && message.body.ciphertext.is_empty()
}

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|t| t.to_string()).collect()
}

async fn tagged(store: &dyn Store, name: &str, created_at: Timestamp, with: &[&str]) -> ClientId {
    let id = registered(store, name, created_at).await;
    store.set_tags(id, &tags(with)).await.unwrap().unwrap();
    id
}

/// Every client of `audience`, page by page at `limit`, in the order the
/// pages name them.
async fn enumerate(
    store: &dyn Store,
    audience: &Audience,
    registered_by: Timestamp,
    limit: u32,
) -> Vec<ClientId> {
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..200 {
        let page = store
            .audience_page(audience, registered_by, limit, token.as_deref())
            .await
            .unwrap()
            .expect("the store's own token reads");
        assert!(
            page.recipients.len() <= limit as usize,
            "a page of {} at limit {limit}",
            page.recipients.len()
        );
        found.extend(page.recipients);
        match page.next {
            Some(next) => token = Some(next),
            None => return found,
        }
    }
    panic!("enumerating {audience:?} at limit {limit} does not end");
}

/// Asserts that `found` names each of `expected` exactly once.
fn exactly_once(found: &[ClientId], expected: &[ClientId], what: &str) {
    let unique: HashSet<ClientId> = found.iter().copied().collect();
    assert_eq!(
        unique.len(),
        found.len(),
        "{what}: a client came twice: {found:?}"
    );
    assert_eq!(
        unique,
        expected.iter().copied().collect::<HashSet<_>>(),
        "{what}"
    );
}

async fn tagged_ids(store: &dyn Store, tag: &str) -> HashSet<ClientId> {
    let page = store.list_tagged(tag, 100, None).await.unwrap().unwrap();
    assert_eq!(page.next, None);
    page.clients.iter().map(|c| c.id).collect()
}

pub async fn messages_keep_their_expiry(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    let at = T0.plus_millis(60_000);
    assert_eq!(
        append_expiring(store, id, "m1", Some(at)).await,
        Appended::Stored { seq: 1 }
    );
    append(store, id, "m2").await;
    let stored = store.read(Mailbox::Inbox, id, 0, 10).await.unwrap();
    assert_eq!(
        stored.iter().map(|m| m.expires_at).collect::<Vec<_>>(),
        vec![Some(at), None]
    );
    assert_eq!(seq_in_body(&stored[0].body), 1, "the body is as sealed");
    assert_eq!(stored[0].kind, "event");
}

pub async fn purge_turns_expired_unacknowledged_messages_into_tombstones(store: &dyn Store) {
    let a = registered(store, "a", T0).await;
    let b = registered(store, "b", T0).await;
    let now = T0.plus_millis(100);
    let (past, later) = (T0.plus_millis(50), T0.plus_millis(10_000));
    append_expiring(store, a, "m1", Some(past)).await; // acknowledged below
    append_expiring(store, a, "m2", Some(past)).await;
    append_expiring(store, a, "m3", Some(later)).await;
    append_expiring(store, a, "m4", None).await;
    append_expiring(store, a, "m5", Some(now)).await; // expires at `now`
    append_expiring(store, b, "m1", Some(past)).await;
    store.acknowledge(a, 0, 1, T0).await.unwrap();

    let purged = store
        .purge(expiry_cutoffs(now, Timestamp(0)))
        .await
        .unwrap();
    assert_eq!(
        (purged.expired, purged.inbox, purged.finished),
        (3, 0, true),
        "a's 2 and 5, b's 1"
    );
    let left = store.read(Mailbox::Inbox, a, 0, 10).await.unwrap();
    assert_eq!(seqs_of(left.clone()), vec![1, 2, 3, 4, 5], "positions stay");
    let tombstones: Vec<Seq> = left
        .iter()
        .filter(|m| is_tombstone(m))
        .map(|m| m.seq)
        .collect();
    assert_eq!(tombstones, vec![2, 5]);
    for m in left.iter().filter(|m| !is_tombstone(m)) {
        assert_eq!(seq_in_body(&m.body), m.seq, "message {} is intact", m.seq);
        assert_eq!(m.kind, "event");
    }
    // Polls leave a message out by its expiry, tombstone or not.
    assert_eq!(left[1].expires_at, Some(past));
    assert_eq!(left[4].expires_at, Some(now));
    let b_left = store.read(Mailbox::Inbox, b, 0, 10).await.unwrap();
    assert!(is_tombstone(&b_left[0]), "every client's cursor is its own");

    let again = store
        .purge(expiry_cutoffs(now, Timestamp(0)))
        .await
        .unwrap();
    assert_eq!(again.expired, 0, "a tombstone is counted once");
    let later_run = store
        .purge(expiry_cutoffs(later, Timestamp(0)))
        .await
        .unwrap();
    assert_eq!(later_run.expired, 1, "message 3 expires in its turn");

    // The position and the key stay: a retried delivery stores nothing.
    assert_eq!(
        append_expiring(store, a, "m2", Some(past)).await,
        Appended::Duplicate {
            seq: 2,
            same_content: true
        }
    );
    assert_eq!(append(store, a, "m6").await, Appended::Stored { seq: 6 });
    // Acknowledged tombstones go like any acknowledged message.
    store.acknowledge(a, 0, 5, T0).await.unwrap();
    let purged = store
        .purge(expiry_cutoffs(later, T0.plus_millis(1_000)))
        .await
        .unwrap();
    assert_eq!((purged.inbox, purged.expired), (5, 0));
    assert_eq!(
        seqs_of(store.read(Mailbox::Inbox, a, 0, 10).await.unwrap()),
        vec![6]
    );
}

pub async fn appended_seqs_outlive_the_purge_of_acknowledged_messages(store: &dyn Store) {
    let a = registered(store, "a", T0).await;
    let b = registered(store, "b", T0).await;
    let stranger = ClientId::new();
    append(store, b, "earlier").await;
    append(store, a, "publish:p1").await; // a's 1
    append(store, b, "publish:p1").await; // b's 2
    let expected = HashMap::from([(a, 1), (b, 2)]);
    assert_eq!(
        store
            .appended_seqs(Mailbox::Inbox, &[a, b, stranger], "publish:p1")
            .await
            .unwrap(),
        expected
    );

    store.acknowledge(a, 0, 1, T0).await.unwrap();
    let purged = store
        .purge(inbox_cutoffs(T0.plus_millis(1_000)))
        .await
        .unwrap();
    assert_eq!(purged.inbox, 1);
    assert!(store
        .read(Mailbox::Inbox, a, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .appended_seqs(Mailbox::Inbox, &[a, b, stranger], "publish:p1")
            .await
            .unwrap(),
        expected,
        "a delivered, acknowledged and removed message still counts"
    );
    assert_eq!(
        store
            .already_appended(Mailbox::Inbox, &[a, b], "publish:p1")
            .await
            .unwrap(),
        HashSet::from([a, b])
    );
    assert!(store
        .appended_seqs(Mailbox::Inbox, &[a, b], "publish:p9")
        .await
        .unwrap()
        .is_empty());
    assert!(
        store
            .appended_seqs(Mailbox::Outbox, &[a, b], "publish:p1")
            .await
            .unwrap()
            .is_empty(),
        "the outbox's keys are its own"
    );
}

pub async fn an_append_retried_after_purge_is_still_a_duplicate(store: &dyn Store) {
    let id = registered(store, "a", T0).await;
    append(store, id, "publish:p1").await;
    append(store, id, "publish:p2").await;
    store.acknowledge(id, 0, 2, T0).await.unwrap();
    let purged = store
        .purge(inbox_cutoffs(T0.plus_millis(1_000)))
        .await
        .unwrap();
    assert_eq!(purged.inbox, 2);

    assert_eq!(
        append(store, id, "publish:p1").await,
        Appended::Duplicate {
            seq: 1,
            same_content: true
        },
        "a redelivered fan-out job delivers nothing twice"
    );
    let different = Dedup {
        key: "publish:p2".into(),
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
    let state = known(store.touch_client(id, 0, T0, None).await.unwrap());
    assert_eq!(state.head, 2);
    assert!(store
        .read(Mailbox::Inbox, id, 0, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        append(store, id, "publish:p3").await,
        Appended::Stored { seq: 3 }
    );
}

pub async fn acknowledgements_keep_their_latest_forward_moves(store: &dyn Store) {
    let a = registered(store, "a", T0).await;
    let quiet = registered(store, "quiet", T0).await;
    let gone = registered(store, "gone", T0).await;
    let moves = ACK_HISTORY as Seq + 2;
    for i in 0..moves {
        append(store, a, &format!("m{i}")).await;
    }
    let at = |ms: i64| T0.plus_millis(ms);
    let mark = |cursor: Seq, ms: i64| AckMark { cursor, at: at(ms) };
    store.acknowledge(a, 0, 1, at(10)).await.unwrap();
    // None of these moves the cursor, so none is history.
    store.acknowledge(a, 0, 1, at(20)).await.unwrap();
    store.acknowledge(a, 0, 0, at(25)).await.unwrap();
    store.acknowledge(a, 0, moves + 1, at(26)).await.unwrap();
    store.acknowledge(a, 1, 3, at(27)).await.unwrap();
    store.acknowledge(a, 0, 3, at(30)).await.unwrap();

    let states = store.ack_states(&[a, quiet]).await.unwrap();
    assert_eq!(
        states,
        HashMap::from([
            (
                a,
                AckState {
                    acked: 3,
                    history: vec![mark(3, 30), mark(1, 10)],
                }
            ),
            (
                quiet,
                AckState {
                    acked: 0,
                    history: vec![],
                }
            ),
        ])
    );

    for cursor in 4..=moves {
        store
            .acknowledge(a, 0, cursor, at(cursor as i64 * 10))
            .await
            .unwrap();
    }
    let history = store.ack_states(&[a]).await.unwrap()[&a].history.clone();
    let newest: Vec<AckMark> = [mark(1, 10)]
        .into_iter()
        .chain((3..=moves).map(|c| mark(c, c as i64 * 10)))
        .rev()
        .take(ACK_HISTORY)
        .collect();
    assert_eq!(history, newest, "the latest moves, newest first");

    store.delete_client(gone).await.unwrap();
    let states = store.ack_states(&[a, gone, ClientId::new()]).await.unwrap();
    assert_eq!(
        states.keys().copied().collect::<Vec<_>>(),
        vec![a],
        "deleted and unknown clients are left out"
    );
}

pub async fn tags_are_replaced_listed_and_removed_with_the_client(store: &dyn Store) {
    let a = registered(store, "a", T0).await;
    let b = registered(store, "b", T0.plus_millis(1)).await;
    let c = registered(store, "c", T0.plus_millis(2)).await;
    assert_eq!(
        store
            .set_tags(a, &tags(&["door-sensors", "eu"]))
            .await
            .unwrap(),
        Some(tags(&["door-sensors", "eu"]))
    );
    store.set_tags(b, &tags(&["eu"])).await.unwrap();
    assert_eq!(
        store
            .set_tags(ClientId::new(), &tags(&["eu"]))
            .await
            .unwrap(),
        None,
        "an unknown client"
    );

    let listed = store.list_clients(10, None).await.unwrap().unwrap();
    let tags_by_id: HashMap<ClientId, Vec<String>> = listed
        .clients
        .iter()
        .map(|s| (s.id, s.tags.clone()))
        .collect();
    assert_eq!(
        tags_by_id,
        HashMap::from([
            (a, tags(&["door-sensors", "eu"])),
            (b, tags(&["eu"])),
            (c, vec![])
        ])
    );
    let eu = store.list_tagged("eu", 10, None).await.unwrap().unwrap();
    let a_summary = eu.clients.iter().find(|s| s.id == a).expect("a is tagged");
    assert_eq!(a_summary.name.as_deref(), Some("a"));
    assert_eq!(a_summary.created_at, T0);
    assert_eq!(a_summary.tags, tags(&["door-sensors", "eu"]));
    assert_eq!(tagged_ids(store, "eu").await, HashSet::from([a, b]));
    assert_eq!(tagged_ids(store, "door-sensors").await, HashSet::from([a]));
    assert!(tagged_ids(store, "nobody").await.is_empty());

    // Setting tags replaces them all.
    assert_eq!(
        store.set_tags(a, &tags(&["us"])).await.unwrap(),
        Some(tags(&["us"]))
    );
    assert_eq!(tagged_ids(store, "eu").await, HashSet::from([b]));
    assert!(tagged_ids(store, "door-sensors").await.is_empty());
    assert_eq!(tagged_ids(store, "us").await, HashSet::from([a]));
    assert_eq!(store.set_tags(b, &[]).await.unwrap(), Some(vec![]));
    assert!(tagged_ids(store, "eu").await.is_empty());

    assert_eq!(store.delete_client(a).await.unwrap(), Deleted::Deleted);
    assert!(
        tagged_ids(store, "us").await.is_empty(),
        "a deleted client's tags go with it"
    );
    assert_eq!(store.set_tags(a, &tags(&["us"])).await.unwrap(), None);
    assert!(tagged_ids(store, "us").await.is_empty());
    assert_eq!(
        store.list_tagged("us", 2, Some("garbage!")).await.unwrap(),
        Err(BadPageToken)
    );
}

pub async fn tagged_clients_are_listed_once_across_pages(store: &dyn Store) {
    let mut expected = Vec::new();
    for i in 0..7 {
        let with: &[&str] = if i % 2 == 0 { &["eu"] } else { &["eu", "us"] };
        expected.push(tagged(store, &format!("c{i}"), T0.plus_millis(i), with).await);
    }
    tagged(store, "other", T0, &["us"]).await;
    registered(store, "untagged", T0).await;

    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    for pages in 1.. {
        assert!(pages < 20, "paging does not end");
        let page = store
            .list_tagged("eu", 2, token.as_deref())
            .await
            .unwrap()
            .unwrap();
        assert!(page.clients.len() <= 2);
        assert!(page.clients.iter().all(|c| c.tags.contains(&"eu".into())));
        listed.extend(page.clients.iter().map(|c| c.id));
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    exactly_once(&listed, &expected, "clients tagged eu");
}

pub async fn an_audience_of_several_tags_names_each_client_once(store: &dyn Store) {
    let e1 = tagged(store, "e1", T0, &["eu"]).await;
    let e2 = tagged(store, "e2", T0, &["eu", "us"]).await;
    let e3 = tagged(store, "e3", T0, &["door", "eu", "us"]).await;
    let u1 = tagged(store, "u1", T0, &["us"]).await;
    let d1 = tagged(store, "d1", T0, &["door"]).await;
    tagged(store, "x", T0, &["other"]).await;
    registered(store, "untagged", T0).await;

    let audience = Audience::Tags(tags(&["us", "eu", "door"]));
    for limit in [1, 2, 3, 100] {
        let found = enumerate(store, &audience, T0, limit).await;
        exactly_once(
            &found,
            &[e1, e2, e3, u1, d1],
            &format!("us, eu, door at limit {limit}"),
        );
    }
    let eu = enumerate(store, &Audience::Tags(tags(&["eu"])), T0, 2).await;
    exactly_once(&eu, &[e1, e2, e3], "eu");
    let nobody = enumerate(store, &Audience::Tags(tags(&["nobody"])), T0, 5).await;
    assert!(nobody.is_empty());
}

pub async fn an_audience_leaves_out_later_and_deleted_clients(store: &dyn Store) {
    let registered_by = T0.plus_millis(100);
    let early = tagged(store, "early", T0, &["eu"]).await;
    let on_time = tagged(store, "on-time", registered_by, &["eu"]).await;
    tagged(store, "late", registered_by.plus_millis(1), &["eu"]).await;
    let gone = tagged(store, "gone", T0, &["eu"]).await;
    let untagged = registered(store, "untagged", T0).await;
    store.delete_client(gone).await.unwrap();

    for limit in [1, 10] {
        let eu = enumerate(store, &Audience::Tags(tags(&["eu"])), registered_by, limit).await;
        exactly_once(&eu, &[early, on_time], "eu by the publish");
        let all = enumerate(store, &Audience::All, registered_by, limit).await;
        exactly_once(&all, &[early, on_time, untagged], "everyone by the publish");
    }
}

pub async fn everyone_is_enumerated_once_across_pages(store: &dyn Store) {
    let mut expected = Vec::new();
    for i in 0..9 {
        // Some share a creation time.
        let created_at = T0.plus_millis(i / 3);
        expected.push(registered(store, &format!("c{i}"), created_at).await);
    }
    for limit in [1, 2, 4, 100] {
        let found = enumerate(store, &Audience::All, T0.plus_millis(10), limit).await;
        exactly_once(&found, &expected, &format!("everyone at limit {limit}"));
    }
}

pub async fn audience_pages_refuse_what_they_cannot_enumerate(store: &dyn Store) {
    tagged(store, "a", T0, &["eu"]).await;
    for audience in [Audience::Tags(tags(&["eu"])), Audience::All] {
        assert_eq!(
            store
                .audience_page(&audience, T0, 10, Some("garbage!"))
                .await
                .unwrap(),
            Err(BadPageToken),
            "{audience:?}"
        );
    }
    assert!(
        store
            .audience_page(&Audience::Clients { count: 1 }, T0, 10, None)
            .await
            .is_err(),
        "a list of ids is never enumerated"
    );
}

fn publish_id() -> String {
    ClientId::new().to_string()
}

fn header(publish_id: &str, audience: Audience) -> PublishHeader {
    PublishHeader {
        publish_id: publish_id.to_string(),
        kind: "firmware".to_string(),
        created_at: T0,
        audience,
        expires_at: Some(T0.plus_millis(60_000)),
        enumerated: None,
    }
}

fn page(number: u32, recipients: &[ClientId], next: Option<&str>) -> RecipientPage {
    RecipientPage {
        number,
        recipients: recipients.to_vec(),
        next: next.map(str::to_string),
        continued: false,
    }
}

pub async fn publish_headers_and_pages_are_written_once(store: &dyn Store) {
    let id = publish_id();
    assert_eq!(store.load_publish(&id).await.unwrap(), None);
    let first = header(&id, Audience::Tags(tags(&["eu", "door"])));
    store.save_publish(&first).await.unwrap();
    let retried = PublishHeader {
        kind: "other".into(),
        audience: Audience::All,
        expires_at: None,
        ..first.clone()
    };
    store.save_publish(&retried).await.unwrap();
    let loaded = store.load_publish(&id).await.unwrap().expect("saved");
    assert_eq!(loaded.header, first, "a retried publish keeps the first");
    assert!(loaded.pages.is_empty());

    let (a, b, c) = (ClientId::new(), ClientId::new(), ClientId::new());
    let page0 = page(0, &[b, a], Some("token-1"));
    assert_eq!(
        store.save_recipient_page(&id, page0.clone()).await.unwrap(),
        page0
    );
    // A redelivered step that found other clients gets the first page.
    assert_eq!(
        store
            .save_recipient_page(&id, page(0, &[c], None))
            .await
            .unwrap(),
        page0
    );
    // Pages arrive in any order; an empty last page is a page too.
    let page2 = page(2, &[], None);
    let page1 = page(1, &[c], Some("token-2"));
    store.save_recipient_page(&id, page2.clone()).await.unwrap();
    store.save_recipient_page(&id, page1.clone()).await.unwrap();
    store.mark_page_continued(&id, 0).await.unwrap();
    let continued0 = RecipientPage {
        continued: true,
        ..page0.clone()
    };
    assert_eq!(
        store.save_recipient_page(&id, page0.clone()).await.unwrap(),
        continued0,
        "the page as stored, continued"
    );

    let loaded = store.load_publish(&id).await.unwrap().unwrap();
    assert_eq!(loaded.pages, vec![continued0, page1, page2]);
    assert_eq!(loaded.header.enumerated, None, "still enumerating");
    let enumerated = Enumerated {
        pages: 3,
        recipients: 3,
    };
    store.finish_enumeration(&id, enumerated).await.unwrap();
    let loaded = store.load_publish(&id).await.unwrap().unwrap();
    assert_eq!(
        loaded.header,
        PublishHeader {
            enumerated: Some(enumerated),
            ..first
        }
    );
    assert_eq!(store.load_publish(&publish_id()).await.unwrap(), None);
}

pub async fn publish_headers_keep_every_audience(store: &dyn Store) {
    let listed = PublishHeader {
        expires_at: None,
        enumerated: Some(Enumerated {
            pages: 1,
            recipients: 2,
        }),
        ..header(&publish_id(), Audience::Clients { count: 2 })
    };
    let headers = [
        listed,
        header(&publish_id(), Audience::All),
        header(&publish_id(), Audience::Tags(tags(&["us", "eu"]))),
    ];
    for h in &headers {
        store.save_publish(h).await.unwrap();
    }
    for h in &headers {
        let loaded = store.load_publish(&h.publish_id).await.unwrap().unwrap();
        assert_eq!(&loaded.header, h);
    }
}
