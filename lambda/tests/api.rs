//! The Lambda API calls the client makes, against a scripted HTTP double of the Lambda endpoint
//! (the local emulator serves only Invoke): what `deploy` sends to create or update a function,
//! and how `launch` backs off when Invoke is throttled (429).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use thunkmesh_lambda::{Arch, Demand, FunctionSpec, Invocation, LaunchSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// One request as the double saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
    at: Instant,
}

/// An answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

/// Serves HTTP/1.1 on loopback, answering each request with `script(n, request)` (n counts from
/// 0) and recording it.
struct Double {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Double {
    async fn start(script: impl Fn(usize, &Seen) -> Answer + Send + Sync + 'static) -> Double {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (script, log) = (Arc::new(script), seen.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (script, log) = (script.clone(), log.clone());
                connections.spawn(async move {
                    let mut stream = BufReader::new(stream);
                    while let Some(request) = read_request(&mut stream).await {
                        let n = {
                            let mut log = log.lock().expect("lock");
                            log.push(request.clone());
                            log.len() - 1
                        };
                        let (status, headers, body) = script(n, &request);
                        let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
                        for (name, value) in headers {
                            head += &format!("{name}: {value}\r\n");
                        }
                        let reply = format!("{head}\r\n{body}");
                        if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Double { url, seen, _task: task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    async fn client(&self, retries: bool) -> aws_sdk_lambda::Client {
        let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_lambda::config::Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(&self.url);
        thunkmesh_lambda::client_from(loader, retries).await
    }
}

async fn read_request(stream: &mut BufReader<tokio::net::TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut length = 0;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Seen { method, path, body, at: Instant::now() })
}

fn json(status: u16, body: serde_json::Value) -> Answer {
    (status, vec![("content-type", "application/json".into())], body.to_string())
}

fn error(status: u16, kind: &str) -> Answer {
    let (_, mut headers, body) = json(status, serde_json::json!({ "message": format!("scripted {kind}") }));
    headers.push(("x-amzn-errortype", kind.into()));
    (status, headers, body)
}

const ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:tm";

fn function_state() -> Answer {
    json(
        200,
        serde_json::json!({ "Configuration": { "FunctionName": "tm", "FunctionArn": ARN, "State": "Active", "LastUpdateStatus": "Successful" } }),
    )
}

fn spec() -> FunctionSpec {
    FunctionSpec {
        name: "tm".into(),
        role: "arn:aws:iam::123456789012:role/thunkmesh".into(),
        memory_mb: 1769,
        tmp_mb: 2048,
        timeout_seconds: 900,
        arch: Arch::Arm64,
    }
}

/// A stand-in binary: an AArch64 ELF header and some bytes.
fn binary(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.resize(18, 0);
    bytes.extend(183u16.to_le_bytes());
    bytes.extend((0..100_000u32).map(|i| (i % 251) as u8));
    let path = dir.join("thunkmesh");
    std::fs::write(&path, &bytes).expect("write");
    (path, bytes)
}

#[tokio::test]
async fn deploy_creates_a_missing_function_with_the_package_as_bootstrap() {
    let double = Double::start(|n, req| match (n, req.method.as_str()) {
        (0, "GET") => error(404, "ResourceNotFoundException"),
        (_, "POST") => json(201, serde_json::json!({ "FunctionName": "tm", "FunctionArn": ARN, "State": "Pending" })),
        _ => function_state(),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, bytes) = binary(dir.path());
    let zip = thunkmesh_lambda::package(&path, Arch::Arm64).expect("package");
    let deployed = thunkmesh_lambda::deploy(&double.client(true).await, &spec(), zip).await.expect("deploy");
    assert_eq!(deployed, thunkmesh_lambda::Deployed { arn: ARN.into(), created: true });

    let seen = double.seen();
    let calls: Vec<_> = seen.iter().map(|s| format!("{} {}", s.method, s.path)).collect();
    assert_eq!(
        calls[..3],
        ["GET /2015-03-31/functions/tm", "POST /2015-03-31/functions", "GET /2015-03-31/functions/tm"]
    );
    let create: serde_json::Value = serde_json::from_slice(&seen[1].body).expect("JSON body");
    assert_eq!(create["FunctionName"], "tm");
    assert_eq!(create["Runtime"], "provided.al2023");
    assert_eq!(create["Handler"], "bootstrap");
    assert_eq!(create["Role"], "arn:aws:iam::123456789012:role/thunkmesh");
    assert_eq!(create["Architectures"], serde_json::json!(["arm64"]));
    assert_eq!((create["MemorySize"].as_i64(), create["Timeout"].as_i64()), (Some(1769), Some(900)));
    assert_eq!(create["EphemeralStorage"]["Size"], 2048);
    let encoded = create["Code"]["ZipFile"].as_str().expect("the package, base64");
    let zip = aws_smithy_types::base64::decode(encoded).expect("base64");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip archive");
    let mut entry = archive.by_name("bootstrap").expect("bootstrap");
    assert_eq!(entry.unix_mode().map(|m| m & 0o777), Some(0o755));
    let mut content = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut content).expect("read");
    assert_eq!(content, bytes, "the binary, byte for byte");
}

#[tokio::test]
async fn deploy_updates_an_existing_function_configuration_first_then_code() {
    let double = Double::start(|_, req| match req.method.as_str() {
        "PUT" => json(200, serde_json::json!({ "FunctionName": "tm", "FunctionArn": ARN })),
        _ => function_state(),
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let zip = thunkmesh_lambda::package(&binary(dir.path()).0, Arch::Arm64).expect("package");
    let deployed = thunkmesh_lambda::deploy(&double.client(true).await, &spec(), zip).await.expect("deploy");
    assert!(!deployed.created);
    let calls: Vec<_> = double.seen().iter().map(|s| format!("{} {}", s.method, s.path)).collect();
    assert_eq!(
        calls,
        [
            "GET /2015-03-31/functions/tm",
            "PUT /2015-03-31/functions/tm/configuration",
            "GET /2015-03-31/functions/tm",
            "PUT /2015-03-31/functions/tm/code",
            "GET /2015-03-31/functions/tm",
        ]
    );
}

#[tokio::test]
async fn deploy_reports_what_lambda_refused() {
    let double = Double::start(|n, _| {
        if n == 0 { error(404, "ResourceNotFoundException") } else { error(400, "InvalidParameterValueException") }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let zip = thunkmesh_lambda::package(&binary(dir.path()).0, Arch::Arm64).expect("package");
    let e = thunkmesh_lambda::deploy(&double.client(true).await, &spec(), zip).await.expect_err("refused");
    let message = e.to_string();
    assert!(message.starts_with("Lambda CreateFunction for function `tm` failed: "), "{message}");
    assert!(message.contains("InvalidParameterValueException"), "{message}");
}

fn invocation() -> Invocation {
    Invocation {
        rendezvous: "rdv.example:7700".into(),
        fingerprint: "00".repeat(32),
        token: "t".into(),
        slots: 1,
        max_seconds: None,
        idle_seconds: Some(1),
    }
}

/// Launches `workers` at most for one runnable thunk until the double has seen `requests`, then
/// ends the job and returns what the launch did.
async fn launch_until_seen(double: &Double, workers: usize, requests: usize) -> thunkmesh_lambda::Launched {
    let spec = LaunchSpec { function: "tm".into(), workers, invocation: invocation(), linger: Duration::from_secs(5) };
    let (demand, wants) = tokio::sync::watch::channel(Demand::Thunks(1));
    let client = double.client(false).await;
    let launch = thunkmesh_lambda::launch(&client, &spec, wants);
    let end = async {
        while double.seen().len() < requests {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        demand.send_replace(Demand::Ended);
    };
    let (launched, ()) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(launch, end) })
        .await
        .expect("the launch ends");
    launched.expect("launched")
}

#[tokio::test]
async fn throttled_invocations_back_off_and_then_run() {
    const THROTTLES: usize = 3;
    let double = Double::start(|n, _| {
        if n < THROTTLES {
            error(429, "TooManyRequestsException")
        } else {
            json(200, serde_json::json!({ "thunks": 4, "fetched_bytes": 10, "stopped": "idle", "seconds": 1.5, "cold": true }))
        }
    })
    .await;
    // The job ends once the worker has been invoked for real (the launcher may invoke it once
    // more before it hears that the job ended: the end is polled every 5 ms).
    let launched = launch_until_seen(&double, 1, THROTTLES + 1).await;
    let ran = launched.invocations - THROTTLES as u64;
    assert_eq!(launched.throttled, THROTTLES as u64, "{launched:?}");
    assert!((1..=2).contains(&ran) && launched.reports == ran, "{launched:?}");
    assert_eq!((launched.thunks, launched.cold_starts), (4 * ran, ran), "{launched:?}");
    let seen = double.seen();
    assert!(seen.iter().all(|s| s.method == "POST" && s.path == "/2015-03-31/functions/tm/invocations"));
    let payload: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("JSON payload");
    assert_eq!(payload["idle_seconds"], 1);
    // Equal jitter keeps at least half of 100, 200, 400 ms.
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, least) in gaps.iter().zip([50, 100, 200]) {
        assert!(*gap >= Duration::from_millis(least), "gaps {gaps:?}");
    }
}

#[tokio::test]
async fn a_handler_error_answered_as_lambda_does_is_the_functions_error() {
    let double = Double::start(|_, _| {
        let (_, mut headers, _) = json(200, serde_json::Value::Null);
        headers.push(("x-amz-function-error", "Unhandled".into()));
        (200, headers, r#"{"errorType":"NodeFailed","errorMessage":"cache: /tmp is full"}"#.into())
    })
    .await;
    let spec =
        LaunchSpec { function: "tm".into(), workers: 2, invocation: invocation(), linger: Duration::from_secs(5) };
    let (_demand, wants) = tokio::sync::watch::channel(Demand::Thunks(10));
    let e = thunkmesh_lambda::launch(&double.client(false).await, &spec, wants).await.expect_err("gives up");
    assert_eq!(
        e.to_string(),
        "Lambda function `tm` failed 3 times in a row; the last error: NodeFailed: cache: /tmp is full"
    );
    assert_eq!(double.seen().len(), 3, "re-invoked until the third failure in a row");
}

#[tokio::test]
async fn workers_that_end_while_work_remains_are_replaced_and_none_start_after_the_job() {
    let double = Double::start(|_, _| {
        let report =
            serde_json::json!({ "thunks": 1, "fetched_bytes": 0, "stopped": "drained", "seconds": 0.1, "cold": false });
        json(200, report)
    })
    .await;
    // One thunk could run: one worker at a time, replaced each time it answers.
    let launched = launch_until_seen(&double, 2, 3).await;
    assert_eq!(launched.invocations, launched.reports, "{launched:?}");
    assert!(launched.invocations >= 3, "{launched:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(double.seen().len() as u64, launched.invocations, "nothing starts after the job ended");
}
