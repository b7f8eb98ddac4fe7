//! `geokv certs`: a development CA and the certificates a TLS cluster
//! needs, made with rcgen (ECDSA P-256, SHA-256).
//!
//! - The CA: `ca.pem` and `ca-key.pem`. Keep the key off the nodes.
//! - Node certificates: common name `node` (what makes a caller a cluster
//!   member, see [`crate::tls::PEER_COMMON_NAME`]), a subject alternative
//!   name for every address the node is dialled on, valid for server and
//!   client authentication (nodes dial each other with it).
//! - Client certificates: common name = the user (`root` is the built-in
//!   administrator), client authentication only.
//!
//! Keys are written with mode 0600. This is for development and tests;
//! production clusters may use any CA that issues the same shapes (see
//! docs/security.md).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Default validity of every certificate made here, in days.
pub const DEFAULT_VALID_DAYS: u32 = 365;

/// When a certificate is valid, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before_unix_s: i64,
    pub not_after_unix_s: i64,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        Validity { not_before_unix_s: now - 3600, not_after_unix_s: now + i64::from(days) * 86_400 }
    }

    fn apply(self, params: &mut CertificateParams) -> anyhow::Result<()> {
        params.not_before = time::OffsetDateTime::from_unix_timestamp(self.not_before_unix_s)?;
        params.not_after = time::OffsetDateTime::from_unix_timestamp(self.not_after_unix_s)?;
        Ok(())
    }
}

/// The files of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA's files in `dir`.
pub fn ca_files(dir: &Path) -> Written {
    Written { cert: dir.join("ca.pem"), key: dir.join("ca-key.pem") }
}

/// Creates a self-signed CA in `dir` (`ca.pem`, `ca-key.pem`). Refuses to
/// overwrite an existing CA: every certificate it signed would stop
/// verifying.
pub fn create_ca(dir: &Path, validity: Validity) -> anyhow::Result<Written> {
    let files = ca_files(dir);
    anyhow::ensure!(
        !files.cert.exists(),
        "{} exists: a new CA would invalidate every certificate the old one signed (remove it first)",
        files.cert.display()
    );
    let mut params = CertificateParams::default();
    params.distinguished_name = name("geokv CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity.apply(&mut params)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// Creates a node certificate signed by the CA in `dir`, written as
/// `DIR/NAME.pem` and `DIR/NAME-key.pem`, for the given hosts (IP
/// addresses or DNS names: every address peers and clients dial).
pub fn create_node(dir: &Path, name_prefix: &str, hosts: &[String], validity: Validity) -> anyhow::Result<Written> {
    anyhow::ensure!(!hosts.is_empty(), "a node certificate needs at least one host (--san) it is dialled on");
    let sans = hosts
        .iter()
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(h.as_str().try_into().with_context(|| format!("{h:?} is not a host name"))?)),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.distinguished_name = name(crate::tls::PEER_COMMON_NAME);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sign(dir, name_prefix, params, validity)
}

/// Creates a client certificate for `user`, written as
/// `DIR/client.USER.pem` and `DIR/client.USER-key.pem`.
pub fn create_client(dir: &Path, user: &str, validity: Validity) -> anyhow::Result<Written> {
    anyhow::ensure!(
        user == crate::auth::ROOT_USER || crate::auth::check_user_name(user).is_ok(),
        "{user:?} is not a user name: {}",
        crate::auth::check_user_name(user).err().unwrap_or_default()
    );
    let mut params = CertificateParams::default();
    params.distinguished_name = name(user);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sign(dir, &format!("client.{user}"), params, validity)
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn.push(DnType::OrganizationName, "geokv");
    dn
}

fn sign(dir: &Path, prefix: &str, mut params: CertificateParams, validity: Validity) -> anyhow::Result<Written> {
    let ca = ca_files(dir);
    let ca_pem = std::fs::read_to_string(&ca.cert)
        .with_context(|| format!("cannot read the CA {} (make one with `geokv certs ca`)", ca.cert.display()))?;
    let ca_key = std::fs::read_to_string(&ca.key).with_context(|| format!("cannot read {}", ca.key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key).with_context(|| format!("{} is not a private key", ca.key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{} is not a CA certificate", ca.cert.display()))?;
    validity.apply(&mut params)?;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let files = Written { cert: dir.join(format!("{prefix}.pem")), key: dir.join(format!("{prefix}-key.pem")) };
    write(&files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

fn write(files: &Written, cert: &str, key: &str) -> anyhow::Result<()> {
    if let Some(dir) = files.cert.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Write to a temporary name and rename: a node polling the files for
    // rotation never reads half a certificate.
    let put = |path: &Path, text: &str, private: bool| -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            if private {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            #[cfg(not(unix))]
            let _ = private;
            let mut f = options.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    };
    // The key first: a poller that sees the new certificate finds its key.
    put(&files.key, key, true)?;
    put(&files.cert, cert, false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_node_and_client_certificates_of_the_expected_shape() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), Validity::days(1)).unwrap();
        assert!(create_ca(dir.path(), Validity::days(1)).unwrap_err().to_string().contains("exists"));
        let node =
            create_node(dir.path(), "node", &["127.0.0.1".into(), "localhost".into()], Validity::days(1)).unwrap();
        let client = create_client(dir.path(), "alice", Validity::days(1)).unwrap();
        let der = |path: &Path| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_file(path).unwrap()
        };
        assert_eq!(crate::tls::describe(&der(&node.cert)).unwrap().0.as_deref(), Some("node"));
        assert_eq!(crate::tls::describe(&der(&client.cert)).unwrap().0.as_deref(), Some("alice"));
        // The node's files load as a node's TLS material; a client's do not.
        let ca = ca_files(dir.path()).cert;
        crate::tls::Tls::load(crate::tls::TlsFiles { ca: ca.clone(), cert: node.cert, key: node.key }).unwrap();
        let err =
            crate::tls::Tls::load(crate::tls::TlsFiles { ca, cert: client.cert.clone(), key: client.key.clone() })
                .unwrap_err();
        assert!(format!("{err:#}").contains("not \"node\""), "{err:#}");
        assert!(create_client(dir.path(), "bad name", Validity::days(1)).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(client.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
