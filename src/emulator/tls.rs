//! HTTPS for the emulator: a throwaway CA and a server certificate for `127.0.0.1` and
//! `localhost` made with rcgen, or a certificate and key read from PEM files; served with rustls.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::EmulatorError;

/// File name of the CA certificate [`EmulatorTls::generate_into`] writes.
pub const CA_FILE: &str = "ca.pem";
/// File name of the server certificate [`EmulatorTls::generate_into`] writes.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the server's private key [`EmulatorTls::generate_into`] writes.
pub const KEY_FILE: &str = "key.pem";

/// The certificate the emulator serves HTTPS with; see [`EmulatorBuilder::tls`](super::EmulatorBuilder::tls).
///
/// Clients must trust the CA that issued it: [`ca_pem`](Self::ca_pem) and
/// [`ca_file`](Self::ca_file) give it when it was generated here. Its `Debug` output does not
/// show the private key.
#[derive(Clone)]
pub struct EmulatorTls {
    cert_chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    ca_pem: Option<String>,
    ca_file: Option<PathBuf>,
}

impl fmt::Debug for EmulatorTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorTls")
            .field("certificates", &self.cert_chain.len())
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl EmulatorTls {
    /// A fresh CA (kept in memory only) and a server certificate it signs, for the IP address
    /// `127.0.0.1` and the name `localhost`. Trust [`ca_pem`](Self::ca_pem) in the client.
    pub fn generate() -> Result<EmulatorTls, EmulatorError> {
        let generated = Generated::new().map_err(|e| EmulatorError::Tls(e.to_string()))?;
        let mut tls = EmulatorTls::from_pem(generated.cert.as_bytes(), generated.key.as_bytes(), "generated")?;
        tls.ca_pem = Some(generated.ca);
        Ok(tls)
    }

    /// Like [`generate`](Self::generate), and writes the CA certificate, the server certificate
    /// and its key into `dir` (created if missing) as [`CA_FILE`], [`CERT_FILE`] and [`KEY_FILE`],
    /// replacing earlier ones: point clients at `dir/ca.pem`.
    pub fn generate_into(dir: impl AsRef<Path>) -> Result<EmulatorTls, EmulatorError> {
        let dir = dir.as_ref();
        let generated = Generated::new().map_err(|e| EmulatorError::Tls(e.to_string()))?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map(|()| path.clone())
                .map_err(|source| EmulatorError::TlsFile { path, source })
        };
        std::fs::create_dir_all(dir).map_err(|source| EmulatorError::TlsFile {
            path: dir.to_owned(),
            source,
        })?;
        let ca_file = write(CA_FILE, &generated.ca)?;
        write(CERT_FILE, &generated.cert)?;
        write(KEY_FILE, &generated.key)?;
        let mut tls = EmulatorTls::from_pem(generated.cert.as_bytes(), generated.key.as_bytes(), "generated")?;
        tls.ca_pem = Some(generated.ca);
        tls.ca_file = Some(ca_file);
        Ok(tls)
    }

    /// A certificate chain (the server's certificate first) and its private key (PKCS#8, PKCS#1
    /// or SEC1), read from PEM files. The CA is not known here: [`ca_pem`](Self::ca_pem) and
    /// [`ca_file`](Self::ca_file) are `None`, and clients must trust whatever issued `cert`.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<EmulatorTls, EmulatorError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| EmulatorError::TlsFile {
                path: path.to_owned(),
                source,
            })
        };
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let what = format!("{} / {}", cert.display(), key.display());
        EmulatorTls::from_pem(&read(cert)?, &read(key)?, &what)
    }

    /// Parses a certificate chain and a key from PEM texts (`what` names them in errors).
    fn from_pem(cert: &[u8], key: &[u8], what: &str) -> Result<EmulatorTls, EmulatorError> {
        let cert_chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EmulatorError::Tls(format!("{what} certificate: {e}")))?;
        if cert_chain.is_empty() {
            return Err(EmulatorError::Tls(format!("{what} certificate: no CERTIFICATE block")));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| EmulatorError::Tls(format!("{what} key: {e}")))?;
        Ok(EmulatorTls {
            cert_chain,
            key: Arc::new(key),
            ca_pem: None,
            ca_file: None,
        })
    }

    /// The PEM text of the CA that issued the server certificate, when it was generated here.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The file holding the CA certificate, when [`generate_into`](Self::generate_into) wrote it.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The rustls server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
    pub(crate) fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, EmulatorError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EmulatorError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(|e| EmulatorError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// A fresh CA and a server certificate for `127.0.0.1` and `localhost`, as PEM texts.
struct Generated {
    ca: String,
    cert: String,
    key: String,
}

impl Generated {
    fn new() -> Result<Generated, rcgen::Error> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tracing-azure-logs emulator CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        // OpenSSL's strict verification (Python 3.13's default) wants the authority key id.
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Generated {
            ca: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
