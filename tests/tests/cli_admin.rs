//! The `pigeonhole` CLI's admin, operator and load-test side against the real
//! local server: publish, clients, rate limiting, bad tokens, simulate.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_file_reaches_every_listed_client() {
    let s = Server::start().await;
    let (a, b) = (Cli::new(&s), Cli::new(&s));
    let (id_a, id_b) = (a.register("a"), b.register("b"));

    let list = a.home.path().join("recipients.txt");
    std::fs::write(
        &list,
        format!(
            "# on-call\n{id_a}\n\n{}   # shouting\n{id_b}\n",
            id_b.to_uppercase()
        ),
    )
    .unwrap();
    let out = a.run_env(
        &[
            "publish",
            "--to-file",
            list.to_str().unwrap(),
            "--type",
            "notice",
            "--payload",
            "\"maintenance at 22:00\"",
            "--json",
        ],
        &[("PIGEONHOLE_ADMIN_TOKEN", s.admin_token())],
    );
    out.expect_ok();
    let receipt: Value = serde_json::from_str(out.stdout.trim()).expect("JSON receipt");
    assert_eq!(receipt["recipients"], json!(2), "duplicates removed");

    s.settle().await;
    for cli in [&a, &b] {
        let out = cli.run(&["listen", "--once", "--json"]);
        out.expect_ok();
        let msg: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(msg["payload"], json!("maintenance at 22:00"));
    }

    // A bad line is named; nothing is published.
    std::fs::write(&list, format!("{id_a}\nnot-a-uuid\n")).unwrap();
    let out = a.run_env(
        &[
            "publish",
            "--to-file",
            list.to_str().unwrap(),
            "--type",
            "t",
            "--payload",
            "1",
        ],
        &[("PIGEONHOLE_ADMIN_TOKEN", s.admin_token())],
    );
    out.expect_code(2);
    assert!(out.stderr.contains("line 2"), "{out:#?}");
    s.settle().await;
    a.run(&["listen", "--once"]).expect_code(3);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_unauthorized_with_a_non_zero_exit() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("x");

    let out = cli.run(&[
        "publish",
        "--to",
        &id,
        "--type",
        "t",
        "--payload",
        "{}",
        "--admin-token",
        "wrong",
    ]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:#?}");

    let out = cli.run_env(&["clients"], &[("PIGEONHOLE_OPERATOR_TOKEN", "wrong")]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:#?}");

    // The token is never echoed, even in --help.
    let out = cli.run_env(
        &["publish", "--help"],
        &[("PIGEONHOLE_ADMIN_TOKEN", "super-secret-admin")],
    );
    out.expect_ok();
    assert!(!out.stdout.contains("super-secret-admin"), "{out:#?}");

    // Missing token: a usage error naming the flag.
    let out = cli.run(&["publish", "--to", &id, "--type", "t", "--payload", "{}"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--admin-token"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_lists_sorts_filters_and_prints_json() {
    let s = Server::start().await;
    let (a, b) = (Cli::new(&s), Cli::new(&s));
    let id_a = a.register("zulu-online");
    let id_b = b.register("alpha-offline");
    // Only A makes an authenticated request, so only A is online.
    a.run(&["listen", "--once"]).expect_code(3);
    let op = [("PIGEONHOLE_OPERATOR_TOKEN", s.operator_token())];

    let out = a.run_env(&["clients"], &op);
    out.expect_ok();
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 4, "header, two rows, total: {out:#?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "STATUS", "LAST", "SEEN"]);
    // Online first, even though its name sorts last.
    assert!(lines[1].starts_with(&id_a), "{out:#?}");
    assert!(lines[1].contains("zulu-online") && lines[1].contains(" online "));
    assert!(
        lines[1].ends_with("just now") || lines[1].ends_with("s ago"),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with(&id_b), "{out:#?}");
    assert!(lines[2].contains("offline") && lines[2].ends_with("never"));
    assert_eq!(lines[3], "2 clients, 1 online");

    let out = a.run_env(&["clients", "--json"], &op);
    out.expect_ok();
    let all: Value = serde_json::from_str(&out.stdout).expect("--json is JSON");
    let all = all.as_array().expect("an array");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["id"], json!(id_a));
    assert_eq!(all[0]["status"], json!("online"));
    assert_eq!(all[1]["last_seen_at"], Value::Null);

    let out = a.run_env(&["clients", "--json", "--status", "offline"], &op);
    out.expect_ok();
    let offline: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(offline, json!([all[1].clone()]));

    let out = a.run_env(&["clients", "--status", "online", "--sort", "name"], &op);
    out.expect_ok();
    assert!(out.stdout.contains(&id_a) && !out.stdout.contains(&id_b));
    assert!(out.stdout.contains("1 of 2 clients shown"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_walks_every_page() {
    let s = Server::start().await;
    for _ in 0..5 {
        s.new_client().await;
    }
    let cli = Cli::new(&s);
    // Pages of 2 (a hidden testing flag; the default is the maximum, 1000).
    let out = cli.run_env(
        &["clients", "--json", "--sort", "created", "--page-size", "2"],
        &[("PIGEONHOLE_OPERATOR_TOKEN", s.operator_token())],
    );
    out.expect_ok();
    let got: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let (want, pages) = s.list_all_clients(2).await;
    assert_eq!(pages, 3);
    assert_eq!(got.len(), 5);
    // Sorted by creation time, whatever order the store's pages came in.
    let created: Vec<&str> = got
        .iter()
        .map(|c| c["created_at"].as_str().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] <= w[1]),
        "--sort created: {created:?}"
    );
    let by_id = |mut v: Vec<Value>| {
        v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        v
    };
    assert_eq!(by_id(got), by_id(want), "every client of every page");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_poll_is_reported_cleanly() {
    let s = Server::start_with(Config {
        poll_rate_limit: Some("1".into()),
        ..Config::default()
    })
    .await;
    let cli = Cli::new(&s);
    cli.register("eager");
    cli.run(&["listen", "--once"]).expect_code(3);
    let out = cli.run(&["listen", "--once"]);
    out.expect_code(1);
    assert!(
        out.stderr.starts_with("error: rate_limited: "),
        "second poll: {out:#?}"
    );
    assert!(out.stderr.contains("retry after"), "{out:#?}");

    // The loop waits instead of failing; Ctrl-C still ends it with 0.
    let mut child = cli.spawn(&["listen", "--interval-base-ms", "100"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !child.stderr().contains("rate limited") {
        assert!(std::time::Instant::now() < deadline, "{}", child.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    let out = child.output(status);
    out.expect_ok();
    assert!(out.stderr.contains("next poll in"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn simulate_polls_decrypts_and_stops_by_itself() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let started = std::time::Instant::now();
    let out = cli.run(&[
        "simulate",
        "--clients",
        "4",
        "--duration",
        "3",
        "--interval-base-ms",
        "100",
        "--publish-every",
        "0.5",
        "--admin-token",
        s.admin_token(),
        "--json",
    ]);
    out.expect_ok();
    assert!(started.elapsed() < Duration::from_secs(20), "bounded");
    let summary: Value = serde_json::from_str(out.stdout.trim()).expect("JSON summary");
    assert_eq!(summary["clients"], json!(4), "{summary}");
    assert!(summary["polls"].as_u64().unwrap() >= 8, "{summary}");
    assert!(summary["received"].as_u64().unwrap() >= 4, "{summary}");
    assert_eq!(summary["failed_verification"], json!(0), "{summary}");
    assert_eq!(summary["errors"], json!(0), "{summary}");
    assert!(summary["p50_ms"].as_f64().is_some(), "{summary}");
    assert!(summary["p99_ms"].as_f64().is_some(), "{summary}");

    let (clients, _) = s.list_all_clients(100).await;
    let mut names: Vec<&str> = clients
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sim-1", "sim-2", "sim-3", "sim-4"]);
    // Nothing was saved: simulate needs no profile.
    assert!(!cli.config_path().exists());

    // The human summary.
    let out = cli.run(&[
        "simulate",
        "--clients",
        "2",
        "--duration",
        "1",
        "--interval-base-ms",
        "100",
    ]);
    out.expect_ok();
    assert!(out.stdout.contains("simulated 2 clients"), "{out:#?}");
    assert!(out.stdout.contains("latency    p50"), "{out:#?}");
}
