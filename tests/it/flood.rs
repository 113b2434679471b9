//! Floods from strangers (issue 12, finding 1): connections that open many streams, each
//! announcing a 16 MiB frame and sending 1 MiB of it, to a node's peer port and to the
//! rendezvous, and connections that never say hello. Neither process may grow by more than
//! 64 MiB while it lasts, and a job still runs. Bounded: 3 connections per listener, 6 s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use thunkmesh_protocol::wire::{ALPN_PEER, ALPN_RENDEZVOUS};

use crate::util::{SelfHosted, memory, reset_peak, write};

/// How much a process may grow under the flood.
const CEILING: u64 = 64 << 20;

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(6);

/// A stranger does not check the certificate of what it floods.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn stranger_config(alpn: &[u8]) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC config");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// One connection that opens up to 1,000 streams, each announcing a 16 MiB frame and sending
/// 1 MiB of it, until `until`.
async fn flood_one(addr: SocketAddr, alpn: &'static [u8], until: Instant) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(2), async {
        endpoint.connect_with(stranger_config(alpn), addr, "thunkmesh").expect("dial").await
    })
    .await
    else {
        return;
    };
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Ok((mut send, _recv))) = tokio::time::timeout(left, conn.open_bi()).await else { break };
        streams.spawn(async move {
            let _ = send.write_all(&(16u32 << 20).to_be_bytes()).await;
            let _ = send.write_all(&vec![0xA5; 1 << 20]).await;
            send
        });
    }
    let _ = tokio::time::timeout(until.saturating_duration_since(Instant::now()), async {
        while streams.join_next().await.is_some() {}
    })
    .await;
    conn.close(0u32.into(), b"done");
}

/// A connection that completes its handshake and then says nothing.
async fn silent_one(addr: SocketAddr, until: Instant) {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    if let Ok(connecting) = endpoint.connect_with(stranger_config(ALPN_RENDEZVOUS), addr, "thunkmesh") {
        let _conn = connecting.await;
        tokio::time::sleep_until(until.into()).await;
    }
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    memory(pid, "VmRSS")
}

/// The node's peer address, as the rendezvous reports it.
fn node_addr(rdv: &SelfHosted, name: &str) -> SocketAddr {
    let listed = || {
        let status = rdv.status();
        let line = status.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1).expect("observed column").parse().expect("address"))
    };
    crate::util::wait_until(Duration::from_secs(20), listed, || format!("{name} never registered: {}", rdv.status()))
}

#[test]
fn strangers_flooding_a_node_and_the_rendezvous_cannot_make_them_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let node = rdv.node(&dir.path().join("node"), "n0");
    let peer = node_addr(&rdv, "n0");
    let rendezvous: SocketAddr = rdv.addr.parse().expect("addr");
    let (rdv_pid, node_pid) = (rdv.pid(), node.0.id());
    let idle = (rss(rdv_pid), rss(node_pid));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let until = Instant::now() + FLOOD;
    let flood = runtime.spawn(async move {
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..3 {
            all.spawn(flood_one(peer, ALPN_PEER, until));
            all.spawn(flood_one(rendezvous, ALPN_RENDEZVOUS, until));
            all.spawn(silent_one(rendezvous, until));
        }
        while all.join_next().await.is_some() {}
    });
    let mut peak = idle;
    while Instant::now() < until + Duration::from_secs(1) {
        peak = (peak.0.max(rss(rdv_pid)), peak.1.max(rss(node_pid)));
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.block_on(flood).expect("flood");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "rendezvous {:.1} -> {:.1} MiB, node {:.1} -> {:.1} MiB",
        mib(idle.0),
        mib(peak.0),
        mib(idle.1),
        mib(peak.1)
    );
    assert!(peak.0 < idle.0 + CEILING, "the rendezvous grew from {:.1} to {:.1} MiB", mib(idle.0), mib(peak.0));
    assert!(peak.1 < idle.1 + CEILING, "the node grew from {:.1} to {:.1} MiB", mib(idle.1), mib(peak.1));

    let job = write(
        dir.path(),
        &[(
            "job.toml",
            "[[thunk]]\nname = \"a\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"echo after > o\"]\noutputs = [\"o\"]\n[targets]\n\"o\" = \"a#o\"\n",
        )],
    );
    let run = rdv.run(dir.path(), &job, &rdv.token);
    run.ok();
    assert_eq!(run.out("o"), b"after\n");
}

/// Keeps one silent stranger connected to `addr` until `until`: when the server drops it, it
/// dials again. Returns how many handshakes completed.
async fn silent_again(addr: SocketAddr, alpn: &'static [u8], until: Instant) -> u64 {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let mut made = 0;
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        let Ok(connecting) = endpoint.connect_with(stranger_config(alpn), addr, "thunkmesh") else { break };
        let Ok(Ok(conn)) = tokio::time::timeout(left, connecting).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        made += 1;
        let _ = tokio::time::timeout(until.saturating_duration_since(Instant::now()), conn.closed()).await;
    }
    made
}

/// Issue 28, finding 1: silent connections without the token, far more than the places
/// for strangers, at the rendezvous and at both nodes' peer ports. Each `status` of a token
/// holder still gets in within a second, a job's intermediate still moves peer to peer (not
/// through storage), and no process grows by 64 MiB. Bounded: 64 silent connections held per
/// listener at once, 8 s.
#[test]
fn silent_strangers_cannot_lock_members_out() {
    const HELD: usize = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let rdv = SelfHosted::start(&dir.path().join("rdv"));
    let nodes: Vec<_> = (0..2).map(|i| rdv.node(&dir.path().join(format!("node-{i}")), &format!("n{i}"))).collect();
    let listeners = [rdv.addr.parse().expect("addr"), node_addr(&rdv, "n0"), node_addr(&rdv, "n1")];
    let pids: Vec<u32> = std::iter::once(rdv.pid()).chain(nodes.iter().map(|n| n.0.id())).collect();
    let idle: Vec<u64> = pids.iter().map(|&p| rss(p)).collect();
    for pid in &pids {
        reset_peak(*pid);
    }

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let until = Instant::now() + Duration::from_secs(8);
    let flood = runtime.spawn(async move {
        let mut all = tokio::task::JoinSet::new();
        for (i, addr) in listeners.into_iter().enumerate() {
            let alpn = if i == 0 { ALPN_RENDEZVOUS } else { ALPN_PEER };
            for _ in 0..HELD {
                all.spawn(silent_again(addr, alpn, until));
            }
        }
        let mut made = 0;
        while let Some(n) = all.join_next().await {
            made += n.expect("flooder");
        }
        made
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        rdv.status();
        slowest = slowest.max(started.elapsed());
    }
    let job = write(
        dir.path(),
        &[(
            "job.toml",
            "[[thunk]]\nname = \"left\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"sleep 0.5; echo left > out\"]\noutputs = [\"out\"]\n\n\
             [[thunk]]\nname = \"right\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"sleep 0.5; echo right > out\"]\noutputs = [\"out\"]\n\n\
             [[thunk]]\nname = \"both\"\nprogram = { host = \"/bin/sh\" }\nargs = [\"-c\", \"read l < l; read r < r; echo $l $r > out\"]\n\
             inputs = { l = \"left#out\", r = \"right#out\" }\noutputs = [\"out\"]\n\n[targets]\n\"both.txt\" = \"both#out\"\n",
        )],
    );
    let run = rdv.run_with(dir.path(), &job, &["--memo", "off"]);
    let peak: Vec<u64> = pids.iter().map(|&p| memory(p, "VmHWM")).collect();
    let made = runtime.block_on(flood).expect("flood");
    eprintln!("{made} silent connections; slowest status {slowest:?}; memory {idle:?} -> {peak:?}");
    assert!(made > 3 * HELD as u64, "the flood made only {made} connections");
    assert!(slowest < Duration::from_secs(1), "a token holder waited {slowest:?} to get in");
    run.ok();
    assert_eq!(run.out("both.txt"), b"left right\n");
    assert_eq!(run.num("storage_fallbacks"), 0, "nothing fell back to storage: {}", run.summary);
    assert_eq!(run.num("peer_fetches"), 1, "one producer's output crossed: {}", run.summary);
    for ((pid, before), after) in pids.iter().zip(idle).zip(peak) {
        assert!(after < before + CEILING, "process {pid} grew from {before} to {after} bytes");
    }
}
