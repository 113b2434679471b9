//! The live web view and the reports after the fact, in a real browser: headless Chromium
//! (Debian's `chromium`) driven by playwright-core (`tests/it/browser.cjs`), both installed by
//! `scripts/test`. The view is served by a real rendezvous running a real job on two nodes; the
//! `--timings` page and `--trace` file are those of the wordfreq example.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::util::{SelfHosted, repo, run_in, skipped, write};

/// playwright-core as `scripts/test` installs it, and the browser; `None` (the test is noted as
/// skipped) when either is missing.
fn browser(test: &str) -> Option<(PathBuf, PathBuf)> {
    let playwright = repo("target/browser/node_modules/playwright-core");
    let chromium = PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    if playwright.is_dir() && chromium.is_file() {
        return Some((playwright, chromium));
    }
    skipped(test, "needs Chromium and playwright-core under target/browser (scripts/test installs both)");
    None
}

/// Runs `tests/it/browser.cjs` with `args`; what it saw, or a panic with what it said.
fn drive(browser: &(PathBuf, PathBuf), args: &[&str]) -> Value {
    let out = Command::new("node")
        .arg(repo("tests/it/browser.cjs"))
        .args(args)
        .env("PLAYWRIGHT_CORE", &browser.0)
        .env("CHROMIUM", &browser.1)
        .output()
        .expect("start node");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed:\n{stderr}\n{stdout}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn free_port(udp: bool) -> u16 {
    let port = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    };
    port.expect("a free port").port()
}

/// One thunk that makes 100 kB, then six that each wait and copy it: a job of about ten
/// seconds on two one-slot nodes, so that the view sees it run.
fn slow_job(dir: &Path) -> PathBuf {
    let mut text = String::from(
        "[[thunk]]\nname = \"seed\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"sleep 1; head -c 100000 /dev/zero > out\"]\noutputs = [\"out\"]\n",
    );
    let mut targets = String::from("[targets]\n");
    for i in 1..=6 {
        let wait = 1 + i % 3;
        text.push_str(&format!(
            "[[thunk]]\nname = \"copy-{i}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"sleep {wait}; cat in > out; echo {i} >> out\"]\ninputs = {{ \"in\" = \"seed#out\" }}\noutputs = [\"out\"]\n"
        ));
        targets.push_str(&format!("\"copy-{i}\" = \"copy-{i}#out\"\n"));
    }
    write(dir, &[("slow.toml", &(text + &targets))])
}

/// A raw HTTP/1.1 request to `addr`; the answer as read until the server closed the
/// connection (or 20 s passed).
fn http(addr: &str, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the view");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let _ = stream.write_all(head.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of [`http`]'s answer, or 0 if the server closed the connection without one.
fn http_status(addr: &str, head: &str) -> u16 {
    http(addr, head).split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[test]
fn the_live_view_follows_a_job_in_a_real_browser_and_refuses_strangers() {
    let Some(browser) = browser("web::the_live_view_follows_a_job_in_a_real_browser_and_refuses_strangers") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let view = format!("127.0.0.1:{}", free_port(false));
    let quic = format!("127.0.0.1:{}", free_port(true));
    let rdv = SelfHosted::start_on(&dir.path().join("rdv"), &quic, &["--http", &view], &[]);
    let _nodes: Vec<_> = (0..2).map(|i| rdv.node(&dir.path().join(format!("node-{i}")), &format!("n{i}"))).collect();
    rdv.wait_for_nodes(2, Duration::from_secs(30));

    // Without the token nothing is shown, and a request head past the budget is cut off.
    let get = |path: &str, auth: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    assert_eq!(http_status(&view, &get("/api/status", "")), 401);
    assert_eq!(http_status(&view, &get("/api/status", "Authorization: Bearer nope\r\n")), 401);
    assert_eq!(http_status(&view, &get("/?token=nope", "")), 401);
    let kept_alive = http(&view, "GET /api/journal HTTP/1.1\r\nHost: x\r\n\r\n").to_ascii_lowercase();
    assert!(kept_alive.starts_with("http/1.1 401") && kept_alive.contains("connection: close"), "{kept_alive}");
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 * 1024));
    assert_ne!(http_status(&view, &huge), 200);
    // With it, /api/status answers what `status --json` prints.
    let bearer = format!("Authorization: Bearer {}\r\n", rdv.token);
    assert_eq!(http_status(&view, &get("/api/status", &bearer)), 200);
    let api: Value = {
        let mut stream = TcpStream::connect(&view).expect("connect");
        stream.write_all(get("/api/status", &bearer).as_bytes()).expect("ask");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default()).expect("JSON")
    };
    let cli = rdv.status_json();
    assert_eq!(api["nodes"].as_array().map(Vec::len), Some(2));
    for key in ["schema_version", "nodes", "jobs"] {
        assert_eq!(api[key].is_array(), cli[key].is_array(), "{key}");
    }
    assert_eq!(api["nodes"][0]["name"], cli["nodes"][0]["name"]);
    assert_eq!(api["nodes"][0]["fingerprint"], cli["nodes"][0]["fingerprint"]);

    let job = slow_job(dir.path());
    let running = rdv.run_in_background(dir.path(), &job);
    let shot = repo("target/artifacts/web-view.png");
    std::fs::create_dir_all(shot.parent().expect("a folder")).expect("mkdir artifacts");
    let names = (1..=6).map(|i| format!("copy-{i}")).chain(["seed".to_owned()]).collect::<Vec<_>>().join(",");
    let seen = drive(&browser, &["view", &format!("http://{view}"), &rdv.token, &shot.display().to_string(), &names]);
    running.join().expect("the run").ok();

    assert!(seen["later"]["bars"].as_u64() > seen["first"]["bars"].as_u64(), "{seen}");
    assert_ne!(seen["later"]["progress"], seen["first"]["progress"], "{seen}");
    let detail = seen["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("Why there") && detail.contains(" on n"), "{detail}");
    assert!(seen["finished"].as_str().unwrap_or_default().contains("7 task(s), 7 succeeded"), "{seen}");
    assert!(std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0) > 10_000, "a screenshot at {}", shot.display());
}

#[test]
fn the_timings_page_and_trace_of_wordfreq_name_every_thunk_and_open_in_a_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = repo("examples/wordfreq/job.toml");
    let (page, trace) = (dir.path().join("timings.html"), dir.path().join("trace.json"));
    let extra =
        ["--memo", "off", "--timings", page.to_str().expect("utf-8"), "--trace", trace.to_str().expect("utf-8")];
    run_in(dir.path(), &job, &extra).ok();

    let names = ["corpus", "split", "count-0", "count-1", "count-2", "count-3", "merge"];
    let trace: Value = serde_json::from_slice(&std::fs::read(&trace).expect("the trace")).expect("the trace is JSON");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let tasks: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    let mut named: Vec<&str> = tasks.iter().filter_map(|e| e["name"].as_str()).collect();
    named.sort_unstable();
    let mut want = names.to_vec();
    want.sort_unstable();
    assert_eq!(named, want, "every thunk once");
    for t in &tasks {
        assert!(t["ts"].is_u64() && t["dur"].as_u64() > Some(0) && t["pid"].as_u64() >= Some(1), "{t}");
    }
    let nodes = events.iter().filter(|e| e["ph"] == "M" && e["name"] == "process_name").count();
    assert!((1..=2).contains(&nodes), "a process per node that ran something: {nodes}");
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(html.contains("<li>corpus (") && html.contains("<li>merge ("), "the critical path runs corpus to merge");
    assert!(html.contains("<td>split</td><td>count-0</td>"), "the edge split -> count-0");

    let Some(browser) = browser("web::the_timings_page_and_trace_of_wordfreq_name_every_thunk_and_open_in_a_browser")
    else {
        return;
    };
    let seen = drive(&browser, &["page", page.to_str().expect("utf-8")]);
    assert_eq!(seen["bars"], 7, "{seen}");
    assert!(seen["critical"].as_u64() >= Some(4), "corpus, split, a count and merge: {seen}");
    let titles = seen["bars_titled"].to_string();
    assert!(names.iter().all(|n| titles.contains(&format!("{n} on "))), "{titles}");
}
