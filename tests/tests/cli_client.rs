//! The `pigeonhole` CLI as a client uses it, against the real local server:
//! register, listen (once and as a loop), send.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn register_saves_credentials_0600_and_never_prints_them() {
    let s = Server::start().await;
    let cli = Cli::new(&s);

    let out = cli.run(&["register", "--name", "laptop"]);
    out.expect_ok();
    let path = cli.config_path();
    assert!(path.is_file(), "no config at {}: {out:#?}", path.display());
    assert_eq!(mode(&path), 0o600, "config file mode");
    assert_eq!(mode(path.parent().unwrap()), 0o700, "config dir mode");

    let creds = cli.creds("default");
    let profile = cli.profile("default");
    assert_eq!(profile["url"], json!(s.base));
    assert_eq!(profile["name"], json!("laptop"));
    assert_eq!(profile["cursor"], json!(0));
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(
        printed.contains(&creds.client_id),
        "client id shown: {out:#?}"
    );
    for secret in [&creds.api_token, &creds.personal_token] {
        assert!(
            !printed.contains(secret.as_str()),
            "a token was printed: {out:#?}"
        );
    }
    assert!(
        !printed.contains("pht_"),
        "an API token was printed: {out:#?}"
    );

    // The saved credentials are real: the server accepts them.
    assert!(s.poll(&creds, None, None).await.is_none());

    // The default fingerprint mixes in a per-user secret kept in the config
    // file, and shows nothing of the machine id.
    let secret = fingerprint_secret(&cli);
    let fingerprint = profile["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        let id = id.trim();
        if !id.is_empty() {
            assert!(!fingerprint.contains(id), "{fingerprint} shows {id}");
            assert!(!cli.config().to_string().contains(id));
        }
    }

    // The default fingerprint is stable: registering again recovers the same
    // client, and the file stays 0600.
    let again = cli.run(&["register"]);
    again.expect_ok();
    assert!(
        again.stdout.contains("already registered"),
        "second register: {again:#?}"
    );
    assert_eq!(cli.creds("default"), creds);
    assert_eq!(mode(&path), 0o600);

    // Another profile gets another client (the profile is part of the
    // fingerprint), kept alongside the first.
    cli.run(&["--profile", "work", "register"]).expect_ok();
    let work = cli.creds("work");
    assert_ne!(work.client_id, creds.client_id);
    assert_eq!(cli.creds("default"), creds);
    assert_eq!(fingerprint_secret(&cli), secret, "the secret is made once");

    // Only --show-credentials prints them, as JSON on stdout.
    let shown = cli.run(&["register", "--show-credentials"]);
    shown.expect_ok();
    let v: Value = serde_json::from_str(&shown.stdout).expect("credentials JSON on stdout");
    assert_eq!(v["api_token"], json!(creds.api_token));
    assert_eq!(v["personal_token"], json!(creds.personal_token));
    assert_eq!(v["client_id"], json!(creds.client_id));
}

/// The config file's `fingerprint_secret`, checked to be base64 of 32 bytes.
fn fingerprint_secret(cli: &Cli) -> String {
    use base64::Engine as _;
    let config = cli.config();
    let secret = config["fingerprint_secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no fingerprint_secret in {config}"))
        .to_string();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&secret)
        .expect("fingerprint_secret is base64");
    assert_eq!(bytes.len(), 32);
    secret
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_fingerprint_cannot_be_worked_out_by_another_user() {
    let s = Server::start().await;
    // Same machine, same user name, same profile; only the config file (the
    // HOME) differs, as for another local user who claims to be this one.
    let (victim, other) = (Cli::new(&s), Cli::new(&s));
    let env = [("USER", "alice"), ("LOGNAME", "alice")];
    victim.run_env(&["register"], &env).expect_ok();
    let creds = victim.creds("default");
    let out = other.run_env(&["register"], &env);
    out.expect_ok();
    assert!(out.stdout.contains("Registered new client"), "{out:#?}");
    let theirs = other.creds("default");
    assert_ne!(theirs.client_id, creds.client_id);
    assert_ne!(theirs.api_token, creds.api_token);
    assert_ne!(fingerprint_secret(&victim), fingerprint_secret(&other));

    // Losing the config file (the secret and the profile, which keeps the
    // fingerprint it registered with) means a new client, unless the old
    // fingerprint is passed.
    let old_fp = victim.profile("default")["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let path = victim.config_path();
    let mut config = victim.config();
    config.as_object_mut().unwrap().remove("fingerprint_secret");
    config["profiles"]
        .as_object_mut()
        .unwrap()
        .remove("default");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = victim.run_env(&["register"], &env);
    out.expect_ok();
    assert!(out.stdout.contains("Registered new client"), "{out:#?}");
    assert_ne!(victim.creds("default").client_id, creds.client_id);
    fingerprint_secret(&victim);
    let out = victim.run_env(&["register", "--fingerprint", &old_fp], &env);
    out.expect_ok();
    assert!(out.stdout.contains("already registered"), "{out:#?}");
    assert_eq!(victim.creds("default"), creds);
}

#[tokio::test(flavor = "multi_thread")]
async fn pigeonhole_config_overrides_the_location() {
    let s = Server::start().await;
    let mut cli = Cli::new(&s);
    let custom = cli.home.path().join("elsewhere").join("ph.json");
    cli.env
        .push(("PIGEONHOLE_CONFIG".into(), custom.display().to_string()));
    cli.run(&["register", "--fingerprint", &random_fingerprint()])
        .expect_ok();
    assert!(custom.is_file());
    assert_eq!(mode(&custom), 0o600);
    assert!(!cli.home.path().join(".config").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_then_listen_once_decrypts_acks_then_reports_nothing_new() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("reader");
    let creds = cli.creds("default");

    let payload = json!({"text": "hello", "note": "café ✓", "n": [1, 2, 3]});
    let out = cli.run(&[
        "publish",
        "--to",
        &id,
        "--type",
        "greeting",
        "--payload",
        &payload.to_string(),
        "--admin-token",
        s.admin_token(),
    ]);
    out.expect_ok();
    assert!(
        out.stdout.contains("to 1 recipient"),
        "publish output: {out:#?}"
    );
    s.settle().await;

    let out = cli.run(&["listen", "--once", "--json"]);
    out.expect_ok();
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 1, "one message: {out:#?}");
    let msg: Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_keys(&msg, &["created_at", "id", "payload", "type"]);
    assert_eq!(msg["id"], json!(1));
    assert_eq!(msg["type"], json!("greeting"));
    assert_eq!(msg["payload"], payload);
    assert_timestamp(msg["created_at"].as_str().unwrap());

    // Acked on the server and the cursor saved in the profile.
    assert!(
        s.poll(&creds, None, None).await.is_none(),
        "the message was acked"
    );
    assert_eq!(cli.profile("default")["cursor"], json!(1));

    // Nothing new: exit 3, nothing on stdout.
    let out = cli.run(&["listen", "--once"]);
    out.expect_code(3);
    assert_eq!(out.stdout, "");

    // Human-readable output: `[time] type: payload`.
    s.publish(&[&id], "note", json!({"k": "v"})).await;
    s.publish(&[&id], "note", json!(null)).await;
    let out = cli.run(&["listen", "--once"]);
    out.expect_ok();
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert!(lines[0].starts_with('['), "{}", lines[0]);
    assert!(lines[0].ends_with("] note: {\"k\":\"v\"}"), "{}", lines[0]);
    assert!(lines[1].ends_with("] note: null"), "{}", lines[1]);
    assert_eq!(cli.profile("default")["cursor"], json!(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_uses_the_saved_cursor_across_restarts() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("reader");
    for n in 1..=2 {
        s.publish(&[&id], "n", json!(n)).await;
    }
    cli.run(&["listen", "--once", "--json"]).expect_ok();
    assert_eq!(cli.profile("default")["cursor"], json!(2));

    // A new message, and the profile's cursor is wound back to 1: the next
    // run asks the server for what follows 1 (messages 2 and 3; 2 is still
    // retained), which proves the saved cursor is what drives it.
    s.publish(&[&id], "n", json!(3)).await;
    let path = cli.config_path();
    let mut config = cli.config();
    config["profiles"]["default"]["cursor"] = json!(1);
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = cli.run(&["listen", "--once", "--json"]);
    out.expect_ok();
    let ids: Vec<u64> = out
        .stdout_lines()
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(cli.profile("default")["cursor"], json!(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listen_loop_prints_acks_and_stops_cleanly_on_ctrl_c() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("looper");
    let creds = cli.creds("default");

    // A 100 ms step keeps the test fast; the schedule itself is unit-tested.
    let mut child = cli.spawn(&["listen", "--json", "--interval-base-ms", "100"]);
    for n in 1..=3 {
        s.publish(&[&id], "tick", json!({ "n": n })).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let lines = child.wait_for_lines(3, Duration::from_secs(20));
    let got: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["payload"].clone())
        .collect();
    assert_eq!(got, [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);

    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    let out = child.output(status);
    out.expect_ok();

    assert!(s.poll(&creds, None, None).await.is_none(), "all acked");
    assert_eq!(cli.profile("default")["cursor"], json!(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listen_loop_survives_the_server_going_away() {
    let mut s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("patient");
    let mut child = cli.spawn(&["listen", "--json", "--interval-base-ms", "100"]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    s.kill9();
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.restart().await;
    s.publish(&[&id], "back", json!("again")).await;

    let lines = child.wait_for_lines(1, Duration::from_secs(20));
    assert!(lines[0].contains("\"again\""), "{lines:?}");
    let stderr = child.stderr();
    assert!(stderr.contains("poll failed"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    child.output(status).expect_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn send_encrypts_and_the_server_stores_it() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.register("sender");

    // The server only answers 201 with the next id after it has verified the
    // tag against the client's key and checked the plaintext's shape.
    let out = cli.run(&["send", "--type", "reply", "--payload", r#"{"text": "hi"}"#]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "1");
    let out = cli.run(&["send", "--type", "reply", "--payload", "[1, \"ünïcode\"]"]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "2");

    // Bad input is a clear error, not a panic, and nothing is sent.
    let out = cli.run(&["send", "--type", "reply", "--payload", "{oops"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("error: --payload is not valid JSON"),
        "{out:#?}"
    );
    let out = cli.run(&["send", "--type", "", "--payload", "1"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--type"), "{out:#?}");
    let out = cli.run(&["send", "--type", "reply", "--payload", "3"]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn send_retries_while_the_server_is_down() {
    let mut s = Server::start().await;
    let cli = Cli::new(&s);
    cli.register("sender");
    s.kill9();

    // Retries after 1, 2, 4 s: the server is back for the second or third.
    let mut child = cli.spawn(&["send", "--type", "t", "--payload", "1", "--retries", "4"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.restart().await;
    let status = child.wait_timeout(Duration::from_secs(30));
    let out = child.output(status);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "1");
    assert!(out.stderr.contains("retrying the same message"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_without_a_profile_or_server_fail_clearly() {
    let cli = Cli::with_url("http://127.0.0.1:9");
    let out = cli.run(&["listen", "--once"]);
    out.expect_code(2);
    assert!(out.stderr.contains("pigeonhole register"), "{out:#?}");

    // Nothing listens on port 9: a network error, exit 1, no panic.
    let out = cli.run(&["register", "--fingerprint", &random_fingerprint()]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: network:"), "{out:#?}");
    assert!(!cli.config_path().exists());
}

#[test]
fn help_has_examples_and_completions_are_generated() {
    let cli = Cli::with_url("http://127.0.0.1:9");
    for sub in [
        "register",
        "listen",
        "send",
        "rotate",
        "publish",
        "clients",
        "simulate",
        "profiles",
        "completions",
    ] {
        let out = cli.run(&[sub, "--help"]);
        out.expect_ok();
        assert!(out.stdout.contains("Example"), "{sub} --help: {out:#?}");
    }
    let out = cli.run(&["clients", "delete", "--help"]);
    out.expect_ok();
    assert!(out.stdout.contains("--yes"), "{out:#?}");
    let out = cli.run(&["--help"]);
    assert!(out.stdout.contains("--insecure-http"), "{out:#?}");
    let out = cli.run(&["listen", "--help"]);
    assert!(out.stdout.contains("3 with --once"), "{out:#?}");
    let out = cli.run(&["register", "--help"]);
    assert!(out.stdout.contains("fingerprint_secret"), "{out:#?}");
    for shell in ["bash", "zsh", "fish"] {
        let out = cli.run(&["completions", shell]);
        out.expect_ok();
        assert!(out.stdout.contains("pigeonhole"), "{shell}: {out:#?}");
    }
}

// ---------------------------------------------------------------------------
// Plain http only for loopback; the profile's own fingerprint
// ---------------------------------------------------------------------------

/// A run without `PIGEONHOLE_INSECURE_HTTP` from the caller's shell.
fn run_strict(cli: &Cli, args: &[&str]) -> CliOutput {
    let mut cmd = cli.command(args);
    cmd.env_remove("PIGEONHOLE_INSECURE_HTTP");
    cli.run_with(cmd)
}

#[test]
fn plain_http_to_another_host_is_refused_unless_allowed() {
    // 192.0.2.0/24 is TEST-NET-1: nothing answers there, and nothing is tried.
    let cli = Cli::with_url("http://192.0.2.10:8080");
    let started = std::time::Instant::now();
    for args in [
        &["register", "--fingerprint", "fp-0123456789"][..],
        &["clients", "--operator-token", "t"][..],
        &[
            "clients",
            "delete",
            "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13",
            "--operator-token",
            "t",
            "--yes",
        ][..],
        &[
            "publish",
            "--to",
            "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13",
            "--type",
            "t",
            "--payload",
            "1",
            "--admin-token",
            "a",
        ][..],
        &["simulate", "--clients", "1", "--duration", "1"][..],
    ] {
        let out = run_strict(&cli, args);
        out.expect_code(2);
        assert!(
            out.stderr.contains("refusing plain http:// to 192.0.2.10"),
            "{args:?}: {out:#?}"
        );
        assert!(
            out.stderr.contains("--insecure-http"),
            "how to override: {out:#?}"
        );
        assert!(out.stderr.contains("personal key"), "why: {out:#?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no connection was tried"
    );
    assert!(!cli.config_path().exists(), "nothing was saved");

    // https, and loopback in every spelling, are fine (here: nothing listens).
    for url in ["http://localhost:9", "http://127.0.0.2:9", "http://[::1]:9"] {
        let out = run_strict(
            &cli,
            &["--url", url, "register", "--fingerprint", "fp-0123456789"],
        );
        out.expect_code(1);
        assert!(out.stderr.starts_with("error: network:"), "{url}: {out:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_again_uses_the_fingerprint_saved_in_the_profile() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let fp = random_fingerprint();
    cli.run(&["register", "--name", "own-fp", "--fingerprint", &fp])
        .expect_ok();
    let creds = cli.creds("default");
    // No --fingerprint: the profile's, not the default derived one.
    let out = cli.run(&["register"]);
    out.expect_ok();
    assert!(out.stdout.contains("already registered"), "{out:#?}");
    assert_eq!(cli.creds("default"), creds);
    assert_eq!(cli.profile("default")["fingerprint"], json!(fp));
}

// ---------------------------------------------------------------------------
// rotate (needs POST /clients/rotate on the server)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rotate_replaces_the_credentials_and_keeps_unacknowledged_messages() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("rotor");
    let old = cli.creds("default");
    let old_fp = cli.profile("default")["fingerprint"].clone();

    // Delivered but not acknowledged before the rotation.
    s.publish(
        &[&id],
        "before",
        json!({"n": 1, "text": "sealed under the old key"}),
    )
    .await;

    let out = cli.run(&["rotate"]);
    out.expect_ok();
    assert!(
        out.stdout.contains("Rotated the credentials of client"),
        "{out:#?}"
    );
    let new = cli.creds("default");
    assert_eq!(new.client_id, old.client_id, "the same client");
    assert_ne!(new.api_token, old.api_token);
    assert_ne!(new.personal_token, old.personal_token);
    let printed = format!("{}{}", out.stdout, out.stderr);
    for secret in [&new.api_token, &new.personal_token] {
        assert!(
            !printed.contains(secret.as_str()),
            "a secret was printed: {out:#?}"
        );
    }
    // Saved atomically, 0600, with nothing left pending.
    let path = cli.config_path();
    assert_eq!(mode(&path), 0o600);
    let profile = cli.profile("default");
    assert!(profile.get("pending_fingerprint").is_none(), "{profile}");
    assert_eq!(profile["fingerprint"], old_fp, "the fingerprint is kept");
    assert_eq!(profile["cursor"], json!(0));
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file: {leftovers:?}");

    // The old token is refused from now on; the new one works.
    let resp = s.poll_raw(&old, None, None).await;
    assert_eq!(resp.status().as_u16(), 401);
    expect_error(s.poll_raw(&old, None, None).await, 401, "unauthorized").await;

    // The message from before the rotation decrypts under the new key.
    let out = cli.run(&["listen", "--once", "--json"]);
    out.expect_ok();
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 1, "{out:#?}");
    let msg: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(msg["id"], json!(1));
    assert_eq!(msg["type"], json!("before"));
    assert_eq!(
        msg["payload"],
        json!({"n": 1, "text": "sealed under the old key"})
    );
    assert_eq!(cli.profile("default")["cursor"], json!(1));
    // And the old key does not open what the server delivers now.
    s.publish(&[&id], "after", json!(2)).await;
    let page = s.poll(&new, None, None).await.expect("a page");
    let delivered = messages_of(&page);
    let sealed = &delivered[0];
    let canonical = canonical_json(&sealed["aad"]);
    assert!(
        decrypt_parts(
            &old.key(),
            sealed["ciphertext"].as_str().unwrap(),
            sealed["nonce"].as_str().unwrap(),
            sealed["tag"].as_str().unwrap(),
            canonical.as_bytes(),
        )
        .is_none(),
        "the old key must not open a delivery after the rotation"
    );
    assert_eq!(open_message(&new, sealed)["payload"], json!(2));

    // Sending works with the new credentials.
    let out = cli.run(&["send", "--type", "reply", "--payload", "\"after rotate\""]);
    out.expect_ok();

    // Registering again with the fingerprint returns the new credentials.
    let out = cli.run(&["register"]);
    out.expect_ok();
    assert!(out.stdout.contains("already registered"), "{out:#?}");
    assert_eq!(cli.creds("default"), new);

    // --show-credentials prints the new ones as JSON on stdout.
    let out = cli.run(&["rotate", "--show-credentials"]);
    out.expect_ok();
    let shown: Value = serde_json::from_str(&out.stdout).expect("JSON on stdout");
    let newer = cli.creds("default");
    assert_eq!(shown["api_token"], json!(newer.api_token));
    assert_eq!(shown["personal_token"], json!(newer.personal_token));
    assert_ne!(newer.api_token, new.api_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_with_a_new_fingerprint_retires_the_old_one() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let old_fp = random_fingerprint();
    cli.run(&["register", "--name", "refp", "--fingerprint", &old_fp])
        .expect_ok();
    let old = cli.creds("default");

    let out = cli.run(&["rotate", "--new-fingerprint"]);
    out.expect_ok();
    assert!(out.stdout.contains("fingerprint was replaced"), "{out:#?}");
    let profile = cli.profile("default");
    let new_fp = profile["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(new_fp, old_fp);
    assert_eq!(new_fp.len(), 64, "{new_fp}");
    assert!(
        !out.stdout.contains(&new_fp),
        "the fingerprint is a secret: {out:#?}"
    );
    let new = cli.creds("default");
    assert_eq!(new.client_id, old.client_id);

    // `register` goes on finding this client through the profile's new
    // fingerprint and gets the new credentials back.
    let out = cli.run(&["register"]);
    out.expect_ok();
    assert!(out.stdout.contains("already registered"), "{out:#?}");
    assert_eq!(cli.creds("default"), new);

    // The old fingerprint no longer finds it: it registers a new client.
    let (status, stranger) = s.register_status(&old_fp, None).await;
    assert_eq!(status, 201);
    assert_ne!(stranger.client_id, old.client_id);

    // A fingerprint of your own, checked before anything is sent.
    let out = cli.run(&["rotate", "--fingerprint", "short"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("--fingerprint must be 8 to 256"),
        "{out:#?}"
    );
    assert_eq!(cli.creds("default"), new, "nothing changed");
    let mine = random_fingerprint();
    cli.run(&["rotate", "--fingerprint", &mine]).expect_ok();
    assert_eq!(cli.profile("default")["fingerprint"], json!(mine));
    let (status, same) = s.register_status(&mine, None).await;
    assert_eq!(status, 200);
    assert_eq!(same, cli.creds("default"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_listen_goes_on_with_the_rotated_credentials() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("long-runner");
    let mut child = cli.spawn(&["listen", "--json", "--interval-base-ms", "100"]);
    s.publish(&[&id], "n", json!(1)).await;
    child.wait_for_lines(1, Duration::from_secs(20));

    cli.run(&["rotate"]).expect_ok();
    s.publish(&[&id], "n", json!(2)).await;
    let lines = child.wait_for_lines(2, Duration::from_secs(20));
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["payload"], json!(2), "{lines:?}");
    assert!(child.stderr().contains("rotated"), "{}", child.stderr());
    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    child.output(status).expect_ok();
    assert_eq!(cli.profile("default")["cursor"], json!(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_without_a_profile_or_with_a_revoked_token_fails_clearly() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let out = cli.run(&["rotate"]);
    out.expect_code(2);
    assert!(out.stderr.contains("pigeonhole register"), "{out:#?}");

    cli.register("revoked");
    let path = cli.config_path();
    let mut config = cli.config();
    config["profiles"]["default"]["api_token"] = json!(format!("pht_{}", "A".repeat(43)));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = cli.run(&["rotate"]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:#?}");
    let profile = cli.profile("default");
    assert!(
        profile.get("pending_fingerprint").is_none(),
        "a definite refusal leaves nothing pending: {profile}"
    );
}
