//! TLS on the listener: rustls on the ring provider (the one the NATS client already compiles
//! in), HTTP/2 and HTTP/1.1 offered by ALPN. The certificate and key are read from PEM files
//! and can be read again while serving ([`Tls::reload`], on SIGHUP): new handshakes get the new
//! pair, connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

pub use cal_relay_config::TlsConfig;

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate and key do not fit: {0}")]
    Key(rustls::Error),
}

/// The certificate in use, swappable.
#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A TLS acceptor whose certificate can be re-read.
pub struct Tls {
    config: TlsConfig,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Largest PEM file read (a chain of a few certificates is a few kilobytes).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

fn check_file(path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, e))?;
    if !meta.is_file() || meta.len() > MAX_PEM_BYTES {
        return Err(file_error(path, "not a regular file of at most 1 MiB"));
    }
    Ok(())
}

fn certified_key(config: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    check_file(&config.cert_file)?;
    check_file(&config.key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .map_err(|e| file_error(&config.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&config.cert_file, e))?;
    if certs.is_empty() {
        return Err(file_error(&config.cert_file, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| file_error(&config.key_file, e))?;
    let provider = ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(&config.key_file, e))?;
    let key = CertifiedKey::new(certs, signing);
    key.keys_match().map_err(TlsError::Key)?;
    Ok(Arc::new(key))
}

impl Tls {
    /// Read the certificate and key and build the acceptor.
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        let resolver = Arc::new(Resolver(ArcSwap::new(certified_key(config)?)));
        let mut server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Key)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            config: config.clone(),
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Read the files again; on success new handshakes use the new pair, on failure the old one
    /// stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.config)?;
        self.resolver.0.store(key);
        Ok(())
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
