//! TLS identities and trust: self-signed certificates, SHA-256 fingerprints, and the two ways a
//! dialer comes to trust a server (a pinned fingerprint, or a CA file).

use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::NetError;

/// A certificate and its private key.
#[derive(Debug)]
pub struct Identity {
    /// DER of the certificate (chain head first).
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// A fresh self-signed identity (nodes make one at every start).
    pub fn generate() -> Result<Identity, NetError> {
        let certified = rcgen::generate_simple_self_signed(vec![crate::SERVER_NAME.to_owned()])
            .map_err(|e| NetError::Tls(format!("cannot generate a certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| NetError::Tls(format!("generated key is unusable: {e}")))?;
        Ok(Identity { chain: vec![certified.cert.der().clone()], key })
    }

    /// Loads `cert.pem` and `key.pem` from `dir`, creating a self-signed pair there first if
    /// neither exists (so a self-hosted rendezvous keeps its fingerprint across restarts).
    pub fn load_or_create(dir: &Path) -> Result<Identity, NetError> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert.exists() && !key.exists() {
            let certified = rcgen::generate_simple_self_signed(vec![crate::SERVER_NAME.to_owned()])
                .map_err(|e| NetError::Tls(format!("cannot generate a certificate: {e}")))?;
            std::fs::create_dir_all(dir).map_err(|e| NetError::io(dir, e))?;
            std::fs::write(&cert, certified.cert.pem()).map_err(|e| NetError::io(&cert, e))?;
            write_private(&key, certified.signing_key.serialize_pem().as_bytes()).map_err(|e| NetError::io(&key, e))?;
        }
        Identity::from_pem_files(&cert, &key)
    }

    /// Loads a certificate chain and key from PEM files (a real certificate, for example).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Identity, NetError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| NetError::Tls(format!("{}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(NetError::Tls(format!("{}: no certificate in the file", cert.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| NetError::Tls(format!("{}: {e}", key.display())))?;
        Ok(Identity { chain, key })
    }

    /// SHA-256 of the leaf certificate: what dialers pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.chain[0])
    }
}

/// Writes a new file that only its owner may read (a private key, a token); an existing file
/// is an error, not overwritten.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?.write_all(bytes)
}

/// SHA-256 of a DER certificate (the value `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Parses a fingerprint written as 64 hex digits, colons allowed, or as openssl's whole line
/// (`sha256 Fingerprint=AB:CD:…`, whose label is dropped up to the `=`).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], NetError> {
    let value = text.rsplit_once('=').map_or(text, |(_, value)| value).trim();
    let digits: String = value.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digits, &mut out)
        .map_err(|_| NetError::Tls(format!("fingerprint `{text}` is not 64 hex digits")))?;
    Ok(out)
}

/// How a dialer decides to trust the server it reaches.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 fingerprint.
    Pinned([u8; 32]),
    /// Any certificate for the server's name issued by one of these CAs.
    Roots(Arc<rustls::RootCertStore>),
}

impl Trust {
    /// Trust the CAs in a PEM file.
    pub fn from_ca_file(path: &Path) -> Result<Trust, NetError> {
        let mut roots = rustls::RootCertStore::empty();
        let certs =
            CertificateDer::pem_file_iter(path).map_err(|e| NetError::Tls(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| NetError::Tls(format!("{}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| NetError::Tls(format!("{}: {e}", path.display())))?;
        }
        Ok(Trust::Roots(Arc::new(roots)))
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one certificate, by fingerprint, and checks the handshake signatures with it.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        if seen != self.fingerprint {
            return Err(rustls::Error::General(format!(
                "certificate fingerprint {} is not the pinned {}",
                hex::encode(seen),
                hex::encode(self.fingerprint)
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_bare_with_colons_or_as_openssl_prints_them() {
        let id = Identity::generate().expect("identity");
        let fp = id.fingerprint();
        let plain = hex::encode(fp);
        let colons: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&plain).expect("plain"), fp);
        assert_eq!(parse_fingerprint(&colons.join(":")).expect("colons"), fp);
        let openssl = format!("sha256 Fingerprint={}\n", colons.join(":"));
        assert_eq!(parse_fingerprint(&openssl).expect("openssl's line"), fp);
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint("sha256 Fingerprint=").is_err());
    }

    #[test]
    fn identity_files_are_created_once_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Identity::load_or_create(dir.path()).expect("create");
        let again = Identity::load_or_create(dir.path()).expect("reload");
        assert_eq!(first.fingerprint(), again.fingerprint());
    }
}
