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

use crate::util::{SelfHosted, write};

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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS");
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().expect("number") * 1024
}

/// The node's peer address, as the rendezvous reports it.
fn node_addr(rdv: &SelfHosted, name: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = rdv.status();
        if let Some(line) = status.lines().find(|l| l.starts_with(name)) {
            return line.split_whitespace().nth(1).expect("observed column").parse().expect("address");
        }
        assert!(Instant::now() < deadline, "the node never registered: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
