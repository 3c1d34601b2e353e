//! QUIC transport (quinn on tokio): one connection per pair of ranks that talk, mutually
//! authenticated with the job's credentials, which the launcher makes fresh for every job.
//!
//! Connections are made when first needed, not at start-up: a rank dials a peer at its
//! first write to it (the bytes wait in the peer's outbox meanwhile) and accepts dials at any
//! time, so a job opens only the connections its ranks use (a ring: two per rank, whatever
//! the job's size). Each connection carries one bidirectional stream of frames, opened by
//! the dialler with a greeting (its rank) that the other side answers. When two ranks dial
//! each other at once, the higher rank's connection is kept (see [`dial`]).
//!
//! Tasks on a tokio runtime of the rank's own move bytes between the streams and per-peer
//! buffers; the engine reads and writes those buffers without blocking. The rank's waiting
//! threads drive that runtime themselves ([`super::driver`]): no thread hand-off per message.
//! At exit (an `atexit` handler) every stream is finished and the process waits, briefly,
//! until its peers have all of it: what a rank sent last is not lost (a connection still
//! being made to carry it gets longer), and the peers see it leave at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::driver::{Count, Driver};
use super::Transport;
use crate::error::{Error, Result};
use crate::wire::{DataTemplate, HEADER_LEN};

/// Name every rank's certificate carries.
const SERVER_NAME: &str = "ranks-job";
const ALPN: &[u8] = b"ranks/1";
/// Bytes a peer's outgoing buffer may hold before `write` pushes back.
const OUT_LIMIT: usize = 8 << 20;
/// Socket receive buffer QUIC asks for (the kernel caps it at `net.core.rmem_max`).
const RECV_BUFFER: usize = 4 << 20;
/// Size of the blocks a peer's outgoing bytes are copied into (see [`Outbox`]).
const BLOCK: usize = 256 << 10;
/// Fewer bytes than this, left in a block when the writer drains the outbox, are copied out
/// rather than handed over in their block (which then takes more bytes).
const SMALL: usize = 16 << 10;
/// Free blocks the process keeps for later writes; more go back to the allocator.
const POOL_KEEP: usize = 32;
/// Bytes a peer's incoming buffer may hold before its reader task waits.
const IN_LIMIT: usize = 32 << 20;
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// Make a job CA and the job's certificate and key, signed by it: `(file name, bytes)` for
/// `ca.der`, `cert.der` and `key.der`. The CA's own key is dropped here, so nobody can sign
/// another certificate for the job. The launcher calls this once per job.
pub fn job_credentials() -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |e: rcgen::Error| Error::Bootstrap(format!("making job credentials: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(bad)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(bad)?;
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(bad)?;
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(bad)?;
    Ok(vec![
        ("ca.der".into(), ca.der().to_vec()),
        ("cert.der".into(), cert.der().to_vec()),
        ("key.der".into(), key.serialize_der()),
    ])
}

/// Write credentials from [`job_credentials`] into the job directory `dir`, readable by the
/// owner only.
pub fn write_credentials(dir: &Path, creds: &[(String, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in creds {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if !matches!(name.as_str(), "ca.der" | "cert.der" | "key.der") {
            return Err(Error::Bootstrap(format!(
                "unexpected credential file {name:?}"
            )));
        }
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).map_err(|e| Error::io(format!("reading job credential {}", p.display()), e))
}

/// How the ranks of a job trust each other's certificates.
pub(crate) enum Trust {
    /// The launcher's job credentials (a CA made for the job, and the job's certificate and
    /// key it signed) in the job directory.
    JobCa(std::path::PathBuf),
    /// No launcher (started by srun): each rank's own self-signed certificate, and every
    /// rank's certificate pinned by its SHA-256 fingerprint, which the ranks exchange before
    /// they connect. The pins are set (once) before anyone connects.
    Pinned(Identity, Pins),
}

/// Every rank's certificate fingerprint, once known.
pub(crate) type Pins = Arc<std::sync::OnceLock<Vec<Fingerprint>>>;

/// SHA-256 of a certificate (DER).
pub(crate) type Fingerprint = [u8; 32];

fn fingerprint(der: &[u8]) -> Fingerprint {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut f = [0u8; 32];
    f.copy_from_slice(d.as_ref());
    f
}

/// A rank's own key and self-signed certificate (made fresh by each process; the key never
/// leaves it).
pub(crate) struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Identity {
    pub(crate) fn generate() -> Result<Identity> {
        let bad = |e: rcgen::Error| Error::Bootstrap(format!("making a certificate: {e}"));
        let key = rcgen::KeyPair::generate().map_err(bad)?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(bad)?;
        let cert = params.self_signed(&key).map_err(bad)?;
        Ok(Identity {
            cert: cert.der().to_vec(),
            key: key.serialize_der(),
        })
    }

    pub(crate) fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.cert)
    }
}

/// The server name a client asks for when it connects to rank `peer` under pinned trust:
/// the verifier takes the rank from it and compares the certificate with that rank's pin.
fn pinned_name(peer: usize) -> String {
    format!("rank-{peer}")
}

/// Accepts exactly the pinned certificates: as a server, any rank's (the greeting then says
/// which rank, and `check_pin` holds it to that); as a client, the rank named in the server
/// name. Signatures are checked as usual, with the peer's key from its certificate.
#[derive(Debug)]
struct PinVerifier {
    pins: Pins,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    fn check(&self, cert: &[u8], rank: Option<usize>) -> std::result::Result<(), rustls::Error> {
        let refuse = || {
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )
        };
        let pins = self.pins.get().ok_or_else(refuse)?;
        let f = fingerprint(cert);
        let ok = match rank {
            Some(r) => pins.get(r) == Some(&f),
            None => pins.contains(&f),
        };
        ok.then_some(()).ok_or_else(refuse)
    }
}

impl rustls::client::danger::ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let rank = match server_name {
            rustls::pki_types::ServerName::DnsName(n) => n
                .as_ref()
                .strip_prefix("rank-")
                .and_then(|r| r.parse::<usize>().ok()),
            _ => None,
        };
        let rank = rank.ok_or_else(|| {
            rustls::Error::General(format!("not a rank's server name: {server_name:?}"))
        })?;
        self.check(end_entity, Some(rank))?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl rustls::server::danger::ClientCertVerifier for PinVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.check(end_entity, None)?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Under pinned trust, a connecting rank that says it is `peer` must hold `peer`'s pinned
/// certificate (the handshake only checked it holds some rank's).
fn check_pin(trust: &Trust, conn: &quinn::Connection, peer: usize) -> Result<()> {
    let Trust::Pinned(_, pins) = trust else {
        return Ok(());
    };
    let cert = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|c| fingerprint(c)));
    match (cert, pins.get()) {
        (Some(f), Some(p)) if p.get(peer) == Some(&f) => Ok(()),
        _ => Err(Error::Bootstrap(format!(
            "a connection said it was rank {peer} without rank {peer}'s certificate"
        ))),
    }
}

/// The cryptography of every connection: ring's, preferring AES-128-GCM among TLS 1.3's
/// cipher suites (rustls puts AES-256-GCM first). 128-bit keys are TLS 1.3's mandatory
/// suite and what QUIC's own handshake packets use; four fewer AES rounds a block made
/// streaming 5-10 % faster (the sender's and receiver's packet sealing and opening were a
/// fifth of their time).
fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}

/// Server and client configurations that accept only the job's ranks, and the server name
/// to ask for when connecting to a rank.
fn configs(trust: &Trust) -> Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let tls = |e: rustls::Error| Error::Bootstrap(format!("TLS setup: {e}"));
    let provider = Arc::new(provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?;
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?;
    let (mut server, mut client) = match trust {
        Trust::JobCa(dir) => {
            let (ca, cert, key) = (
                read(dir, "ca.der")?,
                read(dir, "cert.der")?,
                read(dir, "key.der")?,
            );
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(ca)).map_err(tls)?;
            let roots = Arc::new(roots);
            let chain = vec![CertificateDer::from(cert)];
            let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .map_err(|e| Error::Bootstrap(format!("TLS client verifier: {e}")))?;
            (
                server
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain.clone(), key())
                    .map_err(tls)?,
                client
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key())
                    .map_err(tls)?,
            )
        }
        Trust::Pinned(id, pins) => {
            let verifier = Arc::new(PinVerifier {
                pins: pins.clone(),
                algs: provider.signature_verification_algorithms,
            });
            let chain = vec![CertificateDer::from(id.cert.clone())];
            let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone()));
            (
                server
                    .with_client_cert_verifier(verifier.clone())
                    .with_single_cert(chain.clone(), key())
                    .map_err(tls)?,
                client
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_client_auth_cert(chain, key())
                    .map_err(tls)?,
            )
        }
    };
    server.alpn_protocols = vec![ALPN.to_vec()];
    client.alpn_protocols = vec![ALPN.to_vec()];
    let qs = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| Error::Bootstrap(format!("QUIC server config: {e}")))?;
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| Error::Bootstrap(format!("QUIC client config: {e}")))?;
    Ok((
        quinn::ServerConfig::with_crypto(Arc::new(qs)),
        quinn::ClientConfig::new(Arc::new(qc)),
    ))
}

/// Something that wakes a rank's sleeping threads from another thread.
pub(crate) type Waker = Arc<dyn Fn() + Send + Sync>;

/// Wakes the engine's sleeping threads: those parked in the runtime (a tokio `Notify`) and
/// those on our condition variable (threads that cannot drive), or, in a job that also uses
/// shared memory, the rank's doorbell (so one wait covers both transports).
#[derive(Default)]
struct Signal {
    seq: Mutex<u64>,
    cv: Condvar,
    waiting: AtomicUsize,
    /// Threads parked in the runtime (driving it) until this is notified.
    notify: tokio::sync::Notify,
    parked: AtomicUsize,
    external: Option<Waker>,
}

impl Signal {
    fn bump(&self) {
        if let Some(w) = &self.external {
            w();
            return;
        }
        if self.parked.load(SeqCst) > 0 {
            self.notify.notify_waiters();
        }
        if self.waiting.load(SeqCst) > 0 {
            *self.seq.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            self.cv.notify_all();
        }
    }
}

#[derive(Default)]
struct PeerIo {
    inbox: Mutex<Inbox>,
    inbox_space: tokio::sync::Notify,
    outbox: Mutex<Outbox>,
    out_ready: tokio::sync::Notify,
    gone: AtomicBool,
    why: Mutex<Option<String>>,
    /// The peer's world rank.
    rank: usize,
    link: Mutex<Link>,
}

/// Where the connection to a peer stands. Connections are made when first needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Link {
    #[default]
    Idle,
    Dialing,
    Up,
}

impl PeerIo {
    fn new(rank: usize) -> PeerIo {
        PeerIo {
            rank,
            ..PeerIo::default()
        }
    }

    /// Whether the peer is known to be gone: its connection says so, or the job board.
    fn ended(&self) -> bool {
        self.gone.load(SeqCst)
            || crate::board::global().is_some_and(|b| b.ended(self.rank).is_some())
    }

    fn lose(&self, why: String) {
        let mut w = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some(why);
        }
        self.gone.store(true, SeqCst);
    }
}

pub(crate) struct Quic {
    net: Arc<Net>,
    driver: Arc<Driver>,
    /// Frames of nonblocking sends were written and held back (their writer tasks are
    /// notified, but nobody ran them yet): the next wait's [`Transport::flush`], or
    /// [`Transport::drive`], sends them.
    held: AtomicBool,
}

/// Bytes of nonblocking sends a peer's outbox may hold back before they are pushed at
/// once (a window of small sends leaves in a few packets; a stream of large ones is not
/// delayed).
const HOLD_BACK: usize = 64 << 10;

/// A peer's bytes read from its stream and not yet taken by the engine: the chunks quinn
/// handed over, kept as they are (no copy until the engine takes them).
#[derive(Default)]
struct Inbox {
    chunks: VecDeque<bytes::Bytes>,
    len: usize,
}

impl Inbox {
    fn push(&mut self, chunk: bytes::Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Move the first bytes into `dst`, as many as there are and fit; how many.
    fn take(&mut self, dst: &mut [u8]) -> usize {
        let n = self.peek(dst);
        self.len -= n;
        let mut left = n;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.chunks.pop_front();
            } else {
                bytes::Buf::advance(front, left);
                left = 0;
            }
        }
        n
    }

    /// Take the frames with `tmpl`'s header at the front, each whole in the front chunk
    /// (where it lies: no copy of the header, no decoder), while `each` takes the frame's
    /// payload ([`Transport::take_run`]). How many it took; a frame across chunks ends
    /// the run, for the general reads.
    fn take_run(&mut self, tmpl: &DataTemplate, each: &mut dyn FnMut(&[u8]) -> bool) -> usize {
        let mut n = 0;
        while let Some(front) = self.chunks.front_mut() {
            let Some(h) = front
                .get(..HEADER_LEN)
                .and_then(|hb| tmpl.header(hb.try_into().ok()?))
            else {
                break;
            };
            let used = usize::try_from(h.len)
                .ok()
                .and_then(|l| l.checked_add(HEADER_LEN))
                .filter(|&u| u <= front.len());
            let Some(used) = used else {
                break;
            };
            if !each(&front[HEADER_LEN..used]) {
                break;
            }
            n += 1;
            self.len -= used;
            if used == front.len() {
                self.chunks.pop_front();
            } else {
                bytes::Buf::advance(front, used);
            }
        }
        n
    }

    /// Copy the first bytes into `dst` without taking them, as many as there are and fit.
    fn peek(&self, dst: &mut [u8]) -> usize {
        let mut n = 0;
        for c in &self.chunks {
            if n == dst.len() {
                break;
            }
            let k = c.len().min(dst.len() - n);
            dst[n..n + k].copy_from_slice(&c[..k]);
            n += k;
        }
        n
    }
}

/// A peer's bytes written by the engine and not yet handed to quinn, copied into blocks of
/// [`BLOCK`] bytes that come from a pool of the process. A block goes to quinn as it is (no
/// second copy) and back to the pool when quinn drops it, once the peer acknowledged it: a
/// long stream reuses the same warm memory instead of faulting in fresh pages for every
/// message (a tenth of the sender's time before).
struct Outbox {
    /// The block being filled (no capacity before the first write).
    block: Vec<u8>,
    /// Filled blocks, in order.
    full: Vec<bytes::Bytes>,
    len: usize,
    pool: &'static Pool,
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox {
            block: Vec::new(),
            full: Vec::new(),
            len: 0,
            pool: &POOL,
        }
    }
}

/// Free blocks, for any peer's outbox: at most [`POOL_KEEP`].
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

/// The process's pool.
static POOL: Pool = Pool(Mutex::new(Vec::new()));

impl Pool {
    fn get(&self) -> Vec<u8> {
        let free = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        free.unwrap_or_else(|| Vec::with_capacity(BLOCK))
    }

    fn put(&self, mut b: Vec<u8>) {
        b.clear();
        let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_KEEP {
            free.push(b);
        }
    }
}

/// A block handed to quinn; dropped, it goes back to its pool.
struct Block(Vec<u8>, &'static Pool);

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.1.put(std::mem::take(&mut self.0));
    }
}

impl Outbox {
    /// Append all of `buf`.
    fn push(&mut self, mut buf: &[u8]) {
        self.len += buf.len();
        while !buf.is_empty() {
            if self.block.capacity() == 0 {
                self.block = self.pool.get();
            }
            let k = buf.len().min(self.block.capacity() - self.block.len());
            self.block.extend_from_slice(&buf[..k]);
            buf = &buf[k..];
            if self.block.len() == self.block.capacity() {
                let b = Block(std::mem::take(&mut self.block), self.pool);
                self.full.push(bytes::Bytes::from_owner(b));
            }
        }
    }

    /// Everything appended so far, in order, for quinn.
    fn drain(&mut self) -> Vec<bytes::Bytes> {
        let mut out = std::mem::take(&mut self.full);
        if self.block.len() >= SMALL {
            let b = Block(std::mem::take(&mut self.block), self.pool);
            out.push(bytes::Bytes::from_owner(b));
        } else if !self.block.is_empty() {
            out.push(bytes::Bytes::copy_from_slice(&self.block));
            self.block.clear();
        }
        self.len = 0;
        out
    }
}

fn addr_file(dir: &Path, rank: usize) -> std::path::PathBuf {
    dir.join(format!("r{rank}.addr"))
}

/// Ask for a receive buffer of [`RECV_BUFFER`] bytes. The kernel's default (208 KiB) holds
/// only a few joined sends of 64 KiB (`gso.rs`): the burst of a large message overflowed it,
/// and the drops cost retransmissions and congestion backoff (between two namespaces,
/// 256 KiB one-way 320-830 us and 1 MiB 1.2-1.6 ms, against 230-240 us and 0.78-0.83 ms
/// with this buffer). With it alone, long streams were 10-15 % slower than with the small
/// buffer (which kept less in flight, by its drops): a cap on the window (`window.rs`,
/// `RANKS_QUIC_WINDOW`) brings that back.
/// Best effort: a smaller buffer only costs speed.
fn receive_buffer(sock: &std::net::UdpSocket) -> Option<usize> {
    use rustix::net::sockopt;
    let asked = sockopt::set_socket_recv_buffer_size(sock, RECV_BUFFER);
    let got = sockopt::socket_recv_buffer_size(sock).ok();
    tracing::debug!(?asked, ?got, "QUIC socket receive buffer");
    got
}

/// The address to bind: `bind` (an IP address of this host; 127.0.0.1 when unset) and a
/// port, the first free one of `ports` or any.
fn bind_endpoint(
    rt: &Driver,
    server: quinn::ServerConfig,
    bind: Option<&str>,
    ports: Option<(u16, u16)>,
) -> Result<quinn::Endpoint> {
    let ip: std::net::IpAddr = bind
        .unwrap_or("127.0.0.1")
        .parse()
        .map_err(|e| Error::Bootstrap(format!("{}: {e}", crate::config::env::BIND)))?;
    let ports = ports.unwrap_or((0, 0));
    let mut last = None;
    for port in ports.0..=ports.1 {
        let addr = SocketAddr::new(ip, port);
        let made = rt.block_on(async {
            // quinn's own socket, wrapped so that its batches of datagrams leave in bigger
            // sends (`gso.rs`).
            let rt = Arc::new(quinn::TokioRuntime);
            let sock = std::net::UdpSocket::bind(addr)?;
            receive_buffer(&sock);
            let sock = quinn::Runtime::wrap_udp_socket(&*rt, sock)?;
            let sock = super::gso::Joining::new(sock);
            let config = quinn::EndpointConfig::default();
            quinn::Endpoint::new_with_abstract_socket(config, Some(server.clone()), sock, rt)
        });
        match made {
            Ok(e) => return Ok(e),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, e) = last.expect("the range has at least one port");
    Err(Error::io(
        if ports.0 == ports.1 {
            format!("binding a QUIC endpoint on {addr}")
        } else {
            format!(
                "binding a QUIC endpoint on {ip}, ports {}-{}",
                ports.0, ports.1
            )
        },
        e,
    ))
}

/// The address QUIC binds to on a node reached through srun (no ssh connection to take it
/// from): the first IPv4 address, other than loopback, that the node's name resolves to.
pub fn slurm_node_address() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = std::env::var("SLURMD_NODENAME").ok().or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
    })?;
    (name.as_str(), 0)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .map(|ip| ip.to_string())
}

/// A bound endpoint whose address the ranks have yet to exchange: the first half of
/// [`Quic::connect`], for bootstraps that publish addresses their own way.
pub(crate) struct Bound {
    rt: Arc<Driver>,
    endpoint: quinn::Endpoint,
    trust: Trust,
    me: usize,
    size: usize,
}

impl Bound {
    /// Make the runtime and bind the endpoint of rank `me` of `size`, on `bind` (an IP
    /// address of this host; 127.0.0.1 when unset), in `ports` (any when unset).
    pub(crate) fn new(
        me: usize,
        size: usize,
        trust: Trust,
        bind: Option<&str>,
        ports: Option<(u16, u16)>,
    ) -> Result<Bound> {
        let (mut server, mut client) = configs(&trust)?;
        // Keep-alives, so a peer that vanished (its host, its network) is noticed in seconds.
        let mut tc = quinn::TransportConfig::default();
        tc.keep_alive_interval(Some(Duration::from_secs(1)));
        tc.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(5)).expect("5 s is a valid timeout"),
        ));
        // Cubic, its window capped (`window.rs`) as `RANKS_QUIC_WINDOW` says (bootstrap
        // read and checked the settings before any transport was made).
        let window = crate::config::Config::global().map_or_else(
            |_| crate::config::Tuning::default().quic_window,
            |c| c.tuning.quic_window,
        );
        tc.congestion_controller_factory(super::window::congestion(window));
        let tc = Arc::new(tc);
        server.transport_config(tc.clone());
        client.transport_config(tc);
        let rt = Driver::new().map_err(|e| Error::io("starting the QUIC runtime", e))?;
        let mut endpoint = bind_endpoint(&rt, server, bind, ports)?;
        endpoint.set_default_client_config(client);
        Ok(Bound {
            rt,
            endpoint,
            trust,
            me,
            size,
        })
    }

    /// Under pinned trust, set every rank's fingerprint (once, before anyone connects).
    pub(crate) fn pin(&self, pins: Vec<Fingerprint>) -> Result<()> {
        match &self.trust {
            Trust::Pinned(_, p) => p
                .set(pins)
                .map_err(|_| Error::Bootstrap("the pins are already set".into())),
            Trust::JobCa(_) => Err(Error::Bootstrap(
                "pins are for ranks without job credentials".into(),
            )),
        }
    }

    /// The address peers reach this rank at.
    pub(crate) fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|e| Error::io("QUIC endpoint address", e))
    }
}

impl Quic {
    /// This rank's side of the job's QUIC wiring, with the job's credentials and addresses
    /// in the job directory `dir`: bind, publish our address, and be ready to connect to
    /// every peer `p` with `remote[p]` (all peers when `remote` is empty). `wake` (the
    /// shared-memory doorbell) replaces our own ways to wake the rank's sleepers.
    pub(crate) fn connect(
        dir: &Path,
        place: &crate::config::Placement,
        remote: &[bool],
        wake: Option<Waker>,
    ) -> Result<Quic> {
        let me = place.rank;
        let bound = Bound::new(
            me,
            place.size,
            Trust::JobCa(dir.to_path_buf()),
            place.bind.as_deref(),
            place.ports,
        )?;
        // Publish our address (write, then rename: readers never see half a file).
        let tmp = dir.join(format!("r{me}.addr.tmp"));
        std::fs::write(&tmp, bound.local_addr()?.to_string())
            .map_err(|e| Error::io("publishing the address", e))?;
        std::fs::rename(&tmp, addr_file(dir, me))
            .map_err(|e| Error::io("publishing the address", e))?;
        let dir = dir.to_path_buf();
        let lookup = move |peer: usize| -> Option<SocketAddr> {
            std::fs::read_to_string(addr_file(&dir, peer))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        Quic::wire(bound, remote, wake, Box::new(lookup))
    }

    /// The second half: start accepting, and connect to a peer (its address from `lookup`,
    /// asked again until it knows) when we first write to it. Nothing is connected yet
    /// when this returns: a job opens only the connections its ranks use.
    pub(crate) fn wire(
        bound: Bound,
        remote: &[bool],
        wake: Option<Waker>,
        lookup: Lookup,
    ) -> Result<Quic> {
        let Bound {
            rt,
            endpoint,
            trust,
            me,
            size,
        } = bound;
        let is_peer = |p: usize| p != me && (remote.is_empty() || remote[p]);
        let signal = Arc::new(Signal {
            external: wake,
            ..Signal::default()
        });
        let peers: Vec<Option<Arc<PeerIo>>> = (0..size)
            .map(|p| is_peer(p).then(|| Arc::new(PeerIo::new(p))))
            .collect();
        let (exit_tx, exit_rx) = tokio::sync::watch::channel(false);
        let exit = Arc::new(ExitFlush {
            driver: rt.clone(),
            exiting: exit_tx,
            pending: AtomicUsize::new(0),
            dialing: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let net = Arc::new(Net {
            me,
            endpoint,
            trust,
            lookup,
            peers,
            signal,
            exit: exit.clone(),
            exiting: exit_rx,
        });
        rt.spawn(accept_all(net.clone()));
        // The helper first: the exit flush relies on it.
        rt.start()
            .map_err(|e| Error::io("starting the QUIC thread", e))?;
        if EXIT.set(exit).is_ok() {
            crate::at_exit::add(flush_at_exit);
        }
        Ok(Quic {
            net,
            driver: rt,
            held: AtomicBool::new(false),
        })
    }

    /// Push what nonblocking sends held back, if anything (a thread that cannot drive has
    /// the helper do it); whether there was.
    fn push_held(&self) -> bool {
        let held = self.held.swap(false, SeqCst);
        if held {
            self.driver.push();
        }
        held
    }

    /// Run `sleep`, a wait on something else than this transport (a shared-memory doorbell,
    /// which the I/O tasks ring), with the helper thread driving QUIC meanwhile.
    pub(crate) fn asleep_elsewhere(&self, sleep: impl FnOnce()) {
        let _stand_in = self.driver.stand_in();
        sleep();
    }

    /// Sleep on the condition variable the I/O tasks signal (another thread drives).
    fn wait_signalled(&self, timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        let signal = &self.net.signal;
        let _waiting = Count::up(&signal.waiting);
        let before = *signal.seq.lock().unwrap_or_else(|p| p.into_inner());
        if !prepare() {
            let g = signal.seq.lock().unwrap_or_else(|p| p.into_inner());
            if *g == before {
                let _ = signal.cv.wait_timeout(g, timeout);
            }
        }
    }

    fn io(&self, peer: usize) -> Result<&Arc<PeerIo>> {
        self.net
            .peers
            .get(peer)
            .and_then(|p| p.as_ref())
            .ok_or_else(|| Error::InvalidRank {
                rank: peer as i64,
                size: self.net.peers.len(),
            })
    }

    /// Connect to `peer` unless we are connected or connecting.
    fn want(&self, io: &Arc<PeerIo>) {
        let mut link = io.link.lock().unwrap_or_else(|p| p.into_inner());
        if *link == Link::Idle && !io.gone.load(SeqCst) {
            *link = Link::Dialing;
            drop(link);
            self.net.exit.dialing.fetch_add(1, SeqCst);
            let task = Pending::up(&self.net.exit);
            self.driver.spawn(dial(self.net.clone(), io.clone(), task));
        }
    }

    /// How many peers this rank has a connection to (tests and diagnostics).
    #[cfg(test)]
    fn connected(&self) -> usize {
        self.net
            .peers
            .iter()
            .flatten()
            .filter(|io| *io.link.lock().unwrap() == Link::Up)
            .count()
    }
}

/// How a rank finds a peer's QUIC address: `None` while it does not know it yet.
pub(crate) type Lookup = Box<dyn Fn(usize) -> Option<SocketAddr> + Send + Sync>;

/// What the connection tasks share.
struct Net {
    me: usize,
    endpoint: quinn::Endpoint,
    trust: Trust,
    lookup: Lookup,
    peers: Vec<Option<Arc<PeerIo>>>,
    signal: Arc<Signal>,
    exit: Arc<ExitFlush>,
    exiting: tokio::sync::watch::Receiver<bool>,
}

impl Net {
    fn server_name(&self, peer: usize) -> String {
        match &self.trust {
            Trust::JobCa(_) => SERVER_NAME.to_string(),
            Trust::Pinned(..) => pinned_name(peer),
        }
    }

    /// Take `conn` (with its frame stream) as the connection to `io`'s peer: start its
    /// reader and writer, which drains what was written while we connected.
    fn start(
        &self,
        io: &Arc<PeerIo>,
        conn: quinn::Connection,
        tx: quinn::SendStream,
        rx: quinn::RecvStream,
    ) {
        self.exit
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        tracing::debug!(peer = io.rank, "QUIC connection up");
        tokio::spawn(reader(
            io.clone(),
            self.signal.clone(),
            rx,
            self.exiting.clone(),
        ));
        tokio::spawn(writer(
            io.clone(),
            self.signal.clone(),
            tx,
            self.exiting.clone(),
            Pending::up(&self.exit),
        ));
        self.signal.bump();
    }
}

/// Connection codes: why a connection was closed.
const CLOSE_EXITED: u32 = 0;
const CLOSE_REFUSED: u32 = 1;
/// Both ranks dialled each other: the lower rank's connection gives way.
const CLOSE_CROSSED: u32 = 2;
/// The acceptor's answer to a greeting it takes.
const TAKEN: u8 = 1;
/// How long a greeting may take once the handshake is done.
const GREETING_DEADLINE: Duration = Duration::from_secs(10);

/// Connect to `io`'s peer, at our first write to it (or, without a job board, to learn
/// whether it is alive), and start the connection's tasks. When both ranks dial at once,
/// the connection the higher rank dialled is the one kept: the higher rank refuses the
/// lower's dial (closing it as crossed) while its own is pending, and the lower rank takes
/// the higher's whatever its own dial is doing. Writers start only on the kept connection,
/// so nothing is written twice or lost.
async fn dial(net: Arc<Net>, io: Arc<PeerIo>, _task: Pending) {
    let outcome = dial_once(&net, &io).await;
    net.exit.dialing.fetch_sub(1, SeqCst);
    let failed = match outcome {
        Ok(Some((conn, tx, rx))) => {
            let mut link = io.link.lock().unwrap_or_else(|p| p.into_inner());
            if *link == Link::Up {
                // The peer's dial won meanwhile (cannot happen by the rule, but be safe).
                conn.close(CLOSE_CROSSED.into(), b"crossed");
            } else {
                *link = Link::Up;
                drop(link);
                net.start(&io, conn, tx, rx);
            }
            None
        }
        // The higher rank dials us: its connection is the one. Wait for it.
        Ok(None) => {
            let until = tokio::time::Instant::now() + CONNECT_DEADLINE;
            loop {
                if *io.link.lock().unwrap_or_else(|p| p.into_inner()) == Link::Up {
                    break None;
                }
                if io.ended() || tokio::time::Instant::now() >= until {
                    break Some("it never connected to us".to_string());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Err(e) => Some(e),
    };
    if let Some(why) = failed {
        if *io.link.lock().unwrap_or_else(|p| p.into_inner()) != Link::Up {
            io.lose(why);
            net.signal.bump();
        }
    }
}

/// The connection to `io`'s peer with its frame stream, `None` if the peer refused it
/// because its own dial to us is the one to keep, or why it failed.
async fn dial_once(
    net: &Net,
    io: &PeerIo,
) -> std::result::Result<Option<(quinn::Connection, quinn::SendStream, quinn::RecvStream)>, String>
{
    let peer = io.rank;
    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
    let addr = loop {
        if let Some(a) = (net.lookup)(peer) {
            break a;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("it never published its QUIC address".into());
        }
        if io.ended() {
            return Err("it ended before we connected".into());
        }
        if *net.exiting.borrow() && io.outbox.lock().unwrap_or_else(|p| p.into_inner()).len == 0 {
            return Err("this rank exited before it connected".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let failed = |e: &dyn std::fmt::Display| format!("connecting to rank {peer} at {addr}: {e}");
    let conn = net
        .endpoint
        .connect(addr, &net.server_name(peer))
        .map_err(|e| failed(&e))?
        .await
        .map_err(|e| failed(&e))?;
    let greet = async {
        let (mut tx, mut rx) = conn.open_bi().await?;
        tx.write_all(&(net.me as u32).to_le_bytes()).await?;
        let mut answer = [0u8; 1];
        rx.read_exact(&mut answer).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((answer[0], tx, rx))
    };
    match tokio::time::timeout(GREETING_DEADLINE, greet).await {
        Ok(Ok((TAKEN, tx, rx))) => Ok(Some((conn, tx, rx))),
        Ok(Ok((other, ..))) => Err(failed(&format!("unknown answer {other}"))),
        Err(_) => Err(failed(&"it did not answer our greeting")),
        Ok(Err(e)) => match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == CLOSE_CROSSED.into() =>
            {
                Ok(None)
            }
            _ => Err(failed(&e)),
        },
    }
}

/// Take every connection that comes in, each in its own task. A handshake that fails is
/// someone without the job's credentials: it does not count, and does not stop us.
async fn accept_all(net: Arc<Net>) {
    while let Some(incoming) = net.endpoint.accept().await {
        let net = net.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(&net, incoming).await {
                tracing::warn!(error = %e, "refused a connection");
            }
        });
    }
}

/// Read a dialling rank's greeting and keep its connection, or refuse it (see [`dial`]).
async fn answer(net: &Net, incoming: quinn::Incoming) -> std::result::Result<(), String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let greet = async {
        let (tx, mut rx) = conn.accept_bi().await?;
        let mut id = [0u8; 4];
        rx.read_exact(&mut id).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((u32::from_le_bytes(id) as usize, tx, rx))
    };
    let (peer, mut tx, rx) = match tokio::time::timeout(GREETING_DEADLINE, greet).await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return Err(format!("no greeting: {e}")),
        Err(_) => {
            conn.close(CLOSE_REFUSED.into(), b"no greeting");
            return Err("no greeting".into());
        }
    };
    let refuse = |why: String| {
        conn.close(CLOSE_REFUSED.into(), why.as_bytes());
        Err(why)
    };
    let Some(io) = net.peers.get(peer).and_then(Option::as_ref) else {
        return refuse(format!(
            "unexpected greeting from rank {peer} at rank {}",
            net.me
        ));
    };
    if let Err(e) = check_pin(&net.trust, &conn, peer) {
        return refuse(e.to_string());
    }
    let take = {
        let mut link = io.link.lock().unwrap_or_else(|p| p.into_inner());
        let take = match *link {
            Link::Idle => true,
            // Crossed dials: the higher rank's connection is kept.
            Link::Dialing => peer > net.me,
            Link::Up => false,
        };
        if take {
            *link = Link::Up;
        }
        take
    };
    if !take {
        conn.close(CLOSE_CROSSED.into(), b"crossed");
        return Ok(());
    }
    if let Err(e) = tx.write_all(&[TAKEN]).await {
        io.lose(format!("its connection failed: {e}"));
        net.signal.bump();
        return Ok(());
    }
    net.start(io, conn, tx, rx);
    Ok(())
}

/// What the process does on its way out: finish every stream it sends on and wait (briefly)
/// until the peers have everything, so its last messages are not lost and the peers see it
/// leave at once. A connection still being made to carry a last message gets longer.
struct ExitFlush {
    driver: Arc<Driver>,
    exiting: tokio::sync::watch::Sender<bool>,
    /// Tasks the exit waits for: dials, and writers until their stream is finished.
    pending: AtomicUsize,
    dialing: AtomicUsize,
    conns: Mutex<Vec<quinn::Connection>>,
}

/// One task [`ExitFlush`] waits for, counted while it lives.
struct Pending(Arc<ExitFlush>);

impl Pending {
    fn up(exit: &Arc<ExitFlush>) -> Pending {
        exit.pending.fetch_add(1, SeqCst);
        Pending(exit.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, SeqCst);
    }
}

static EXIT: std::sync::OnceLock<Arc<ExitFlush>> = std::sync::OnceLock::new();

fn flush_at_exit() {
    let Some(exit) = EXIT.get() else { return };
    let _ = exit.exiting.send(true);
    let start = Instant::now();
    let flushed = || {
        exit.pending.load(SeqCst) == 0
            || (exit.dialing.load(SeqCst) == 0 && start.elapsed() >= Duration::from_secs(3))
    };
    exit.driver
        .wait_until(flushed, start + Duration::from_secs(20));
    // Say goodbye on every connection: a peer that outlives us learns at once that we are
    // gone, instead of waiting for the idle timeout. Give the runtime a moment to send it.
    let conns = exit.conns.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for c in conns.iter() {
        c.close(CLOSE_EXITED.into(), b"rank exited");
    }
    if !conns.is_empty() {
        exit.driver
            .wait_until(|| false, Instant::now() + Duration::from_millis(5));
    }
}

/// Finish a stream we send on and wait until the peer has all of it (unless it is gone).
async fn finish(mut tx: quinn::SendStream, io: &PeerIo) {
    if !io.ended() && tx.finish().is_ok() {
        // Up to 2 s, less when the peer turns out to be gone (a killed peer never answers).
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        let stopped = tx.stopped();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if io.ended() || tokio::time::Instant::now() >= until {
                        break;
                    }
                }
            }
        }
    }
}

/// Frames in: append to the inbox, signal the rank.
async fn reader(
    io: Arc<PeerIo>,
    signal: Arc<Signal>,
    mut rx: quinn::RecvStream,
    mut exiting: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        while io.inbox.lock().unwrap_or_else(|p| p.into_inner()).len > IN_LIMIT {
            tokio::select! {
                _ = io.inbox_space.notified() => {}
                // Exiting with a full inbox: stop reading rather than wait for room.
                _ = exiting.changed() => {
                    let _ = rx.stop(0u32.into());
                    return;
                }
            }
        }
        let got = tokio::select! {
            r = rx.read_chunk(usize::MAX, true) => r.map(|c| c.map(|c| c.bytes)),
            _ = exiting.changed() => {
                // We read no more: tell the peer at once, so it does not wait for us.
                let _ = rx.stop(0u32.into());
                return;
            }
        };
        match got {
            Ok(Some(chunk)) => {
                io.inbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(chunk);
                signal.bump();
            }
            Ok(None) => {
                io.lose("it exited".into());
                break;
            }
            Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(_))) => {
                io.lose("it exited".into());
                break;
            }
            Err(e) => {
                io.lose(format!("its connection failed: {e}"));
                break;
            }
        }
    }
    signal.bump();
}

/// Frames out: drain the outbox into the stream.
async fn writer(
    io: Arc<PeerIo>,
    signal: Arc<Signal>,
    mut tx: quinn::SendStream,
    mut exiting: tokio::sync::watch::Receiver<bool>,
    _task: Pending,
) {
    loop {
        // Everything written so far, handed to quinn as it is (no copy).
        let mut chunks = io.outbox.lock().unwrap_or_else(|p| p.into_inner()).drain();
        if chunks.is_empty() {
            if *exiting.borrow() {
                break;
            }
            tokio::select! {
                _ = io.out_ready.notified() => {}
                _ = exiting.changed() => {}
            }
            continue;
        }
        // A write waits while the peer's window is full; a peer that died never opens it
        // again (its connection lives on until the idle timeout), and this task is one the
        // exit waits for: stop when the job board says the peer ended.
        let write = tx.write_all_chunks(&mut chunks);
        tokio::pin!(write);
        let wrote = tokio::select! {
            biased;
            r = &mut write => r.map_err(|e| format!("writing to it failed: {e}")),
            () = until_ended(&io) => Err("it ended".to_string()),
        };
        if let Err(why) = wrote {
            io.lose(why);
            signal.bump();
            return;
        }
        signal.bump();
    }
    finish(tx, &io).await;
}

/// Returns once `io`'s peer is known to have ended (looked at every 20 ms).
async fn until_ended(io: &PeerIo) {
    while !io.ended() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Transport for Quic {
    fn name(&self) -> &'static str {
        "quic"
    }

    fn write(&self, peer: usize, buf: &[u8]) -> Result<usize> {
        let io = self.io(peer)?;
        if io.gone.load(SeqCst) {
            let why = io.why.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(Error::PeerLost {
                rank: peer,
                detail: why.unwrap_or_else(|| "its connection closed".into()),
            });
        }
        self.want(io);
        let n = {
            let mut ob = io.outbox.lock().unwrap_or_else(|p| p.into_inner());
            let n = buf.len().min(OUT_LIMIT.saturating_sub(ob.len));
            ob.push(&buf[..n]);
            n
        };
        // The engine calls `notify` once after its writes: the bytes leave then.
        Ok(n)
    }

    fn read(&self, peer: usize, buf: &mut [u8]) -> Result<usize> {
        let io = self.io(peer)?;
        let mut ib = io.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let n = ib.take(buf);
        if ib.len <= IN_LIMIT {
            io.inbox_space.notify_one();
        }
        Ok(n)
    }

    /// Nothing to tell: the read itself told the peer's reader task of the room it made
    /// (QUIC's flow control tells the peer). The default, `notify`, ran this rank's writer
    /// to that peer and a turn of the runtime after every frame read: most of a small
    /// message's cost on a receiver taking a window of them.
    fn read_done(&self, _peer: usize) {}

    fn readable(&self, peer: usize) -> bool {
        self.net.peers[peer]
            .as_ref()
            .is_some_and(|io| io.inbox.lock().unwrap_or_else(|p| p.into_inner()).len > 0)
    }

    /// A peer's bytes wait in its inbox as quinn delivered them: a receive looks at the
    /// frame at the front and reads its payload straight into its own buffer (one copy;
    /// through the general decoder a payload went into a fresh zeroed buffer, faulted in
    /// page by page when large, and the receive copied it again).
    fn in_place(&self, peer: usize) -> bool {
        self.net.peers.get(peer).is_some_and(Option::is_some)
    }

    fn available(&self, peer: usize, _want: usize) -> Option<usize> {
        let io = self.net.peers.get(peer)?.as_ref()?;
        Some(io.inbox.lock().unwrap_or_else(|p| p.into_inner()).len)
    }

    /// A window of small messages lands under one lock of the inbox (the general reads
    /// lock it three or four times a frame, and decode each header).
    fn take_run(
        &self,
        peer: usize,
        tmpl: &DataTemplate,
        each: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<usize> {
        let io = self.io(peer).ok()?;
        let mut ib = io.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let n = ib.take_run(tmpl, each);
        if n > 0 && ib.len <= IN_LIMIT {
            io.inbox_space.notify_one();
        }
        Some(n)
    }

    fn peek(&self, peer: usize, buf: &mut [u8]) -> usize {
        self.io(peer).map_or(0, |io| {
            io.inbox.lock().unwrap_or_else(|p| p.into_inner()).peek(buf)
        })
    }

    /// A frame not all there yet is read as it comes (waiting for all of it before
    /// copying any made a large message's copy come after its last byte).
    fn lands_in_parts(&self, _peer: usize) -> bool {
        true
    }

    fn driven(&self, _peer: usize) -> bool {
        true
    }

    /// After writes to `peer`: its writer task takes them, and this thread runs it now.
    fn notify(&self, peer: usize) {
        if let Ok(io) = self.io(peer) {
            io.out_ready.notify_one();
            self.driver.push();
        }
    }

    fn write_frame_later(
        &self,
        peer: usize,
        h: &crate::wire::Header,
        payload: &[u8],
    ) -> Result<usize> {
        let n = self.write2(peer, &h.encode(), payload)?;
        if n > 0 {
            self.notify_later(peer);
        }
        Ok(n)
    }

    /// The writer task is told (whoever next runs the runtime hands the bytes to quinn),
    /// but this thread does not run it now, unless the outbox holds [`HOLD_BACK`] bytes.
    fn notify_later(&self, peer: usize) {
        let Ok(io) = self.io(peer) else {
            return;
        };
        io.out_ready.notify_one();
        let queued = io.outbox.lock().unwrap_or_else(|p| p.into_inner()).len;
        if queued >= HOLD_BACK {
            self.held.store(false, SeqCst);
            self.driver.push();
        } else {
            self.held.store(true, SeqCst);
        }
    }

    fn holds_back(&self) -> bool {
        true
    }

    fn flush(&self) {
        self.push_held();
    }

    fn drive(&self) {
        if !self.push_held() {
            self.driver.tick();
        }
    }

    fn wake_self(&self) {
        self.net.signal.bump();
    }

    fn wait(&self, _want_write: &[usize], timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        if self.driver.can_drive() {
            // Park in the runtime, driving it, until its tasks signal. Registered before
            // `prepare` looks, so a signal after that look is not lost.
            let notified = self.net.signal.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _parked = Count::up(&self.net.signal.parked);
            if !prepare() {
                self.driver.park(notified, timeout);
            }
            return;
        }
        // The helper drives while this thread sleeps.
        let _stand_in = self.driver.stand_in();
        self.wait_signalled(timeout, prepare);
    }

    fn peer_gone(&self, peer: usize) -> Option<String> {
        let io = self.net.peers.get(peer)?.as_ref()?;
        // Without a job board to say who ended, connecting is how we learn that a peer we
        // never talked to is gone (its address is dead, or it never starts).
        if crate::board::global().is_none() {
            self.want(io);
        }
        // Gone only once everything it sent has been read.
        if io.gone.load(SeqCst) && io.inbox.lock().unwrap_or_else(|p| p.into_inner()).len == 0 {
            return Some(
                io.why
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "its connection closed".into()),
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;

    /// The inbox hands out its chunks' bytes in order, across chunk boundaries and in
    /// pieces of any size, and keeps its count.
    #[test]
    fn the_inbox_takes_bytes_in_order_across_chunks() {
        let mut ib = Inbox::default();
        ib.push(bytes::Bytes::from_static(b"abc"));
        ib.push(bytes::Bytes::from_static(b""));
        ib.push(bytes::Bytes::from_static(b"defgh"));
        assert_eq!(ib.len, 8);
        let mut two = [0u8; 2];
        assert_eq!(ib.take(&mut two), 2);
        assert_eq!(&two, b"ab");
        let mut five = [0u8; 5];
        assert_eq!(ib.take(&mut five), 5);
        assert_eq!(&five, b"cdefg");
        let mut more = [0u8; 4];
        assert_eq!(ib.take(&mut more), 1);
        assert_eq!(&more[..1], b"h");
        assert_eq!((ib.len, ib.take(&mut more)), (0, 0));
    }

    /// A run takes the frames of the template at the front of the inbox while each is
    /// whole in the front chunk and the callback takes it; it stops, leaving the frame, at
    /// another frame, at one the callback refuses and at one across chunks, which the
    /// general reads then take.
    #[test]
    fn the_inbox_takes_a_run_of_frames_of_the_template() {
        use crate::wire::{Encoding, Header};
        let tmpl = DataTemplate::new(3, 0, 7, 11).unwrap();
        let frame = |tag: i32, payload: &[u8]| {
            let h = Header::data(3, 0, tag, payload.len() as u64, Encoding::Raw, 11);
            [&h.encode()[..], payload].concat()
        };
        let mut ib = Inbox::default();
        let run = |ib: &mut Inbox, max: usize| {
            let mut got: Vec<Vec<u8>> = Vec::new();
            let n = ib.take_run(&tmpl, &mut |p| {
                got.push(p.to_vec());
                got.len() <= max
            });
            got.truncate(max);
            assert_eq!(n, got.len());
            got
        };
        assert!(run(&mut ib, 10).is_empty());
        // One chunk with three of ours and another tag's; then one of ours cut across
        // two chunks.
        let mine = [frame(7, b"a"), frame(7, b"bb"), frame(7, b"")].concat();
        let other = frame(8, b"zz");
        let cut = frame(7, b"cut");
        ib.push(bytes::Bytes::from(
            [&mine[..], &other[..], &cut[..10]].concat(),
        ));
        ib.push(bytes::Bytes::from(cut[10..].to_vec()));
        let total = mine.len() + other.len() + cut.len();
        assert_eq!(ib.len, total);
        // The callback refuses the second: one taken.
        assert_eq!(run(&mut ib, 1), [b"a".to_vec()]);
        assert_eq!(run(&mut ib, 10), [b"bb".to_vec(), vec![]]);
        assert_eq!(ib.len, other.len() + cut.len());
        assert!(run(&mut ib, 10).is_empty(), "another tag's frame is next");
        let mut o = vec![0u8; other.len()];
        assert_eq!(ib.take(&mut o), other.len());
        assert_eq!(o, other);
        assert!(run(&mut ib, 10).is_empty(), "a frame across chunks");
        let mut c = vec![0u8; cut.len()];
        assert_eq!(ib.take(&mut c), cut.len());
        assert_eq!(c, cut);
        assert_eq!(ib.len, 0);
        // Frames that fill their chunks exactly: each chunk goes as it is taken.
        ib.push(bytes::Bytes::from(frame(7, b"x")));
        ib.push(bytes::Bytes::from(frame(7, b"y")));
        assert_eq!(run(&mut ib, 10), [b"x".to_vec(), b"y".to_vec()]);
        assert!(ib.chunks.is_empty() && ib.len == 0);
    }

    /// The outbox hands over its bytes in order across blocks; a few bytes left in a block
    /// are copied out and the block kept, more go in their block; blocks quinn drops come
    /// back to the pool and are written into again.
    #[test]
    fn the_outbox_hands_over_its_bytes_in_order_and_reuses_its_blocks() {
        let pool: &'static Pool = Box::leak(Box::default());
        let mut ob = Outbox {
            pool,
            ..Outbox::default()
        };
        let data: Vec<u8> = (0..BLOCK * 2 + 100).map(|i| (i % 251) as u8).collect();
        ob.push(&data[..10]);
        ob.push(&data[10..]);
        assert_eq!(ob.len, data.len());
        let chunks = ob.drain();
        assert_eq!(ob.len, 0);
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(lens, [BLOCK, BLOCK, 100]);
        assert_eq!(chunks.iter().flatten().copied().collect::<Vec<u8>>(), data);
        // The 100 bytes were copied out: their block stays, and takes the next bytes.
        let kept = ob.block.as_ptr();
        ob.push(&data[..SMALL]);
        assert_eq!(ob.block.as_ptr(), kept);
        let more = ob.drain();
        assert_eq!(more.len(), 1);
        assert_eq!(&more[0][..], &data[..SMALL]);
        assert_eq!(
            more[0].as_ptr(),
            kept,
            "a block of SMALL bytes goes as it is"
        );
        // Nothing is back in the pool while quinn holds the blocks.
        assert!(pool.0.lock().unwrap().is_empty());
        drop(chunks);
        drop(more);
        assert_eq!(pool.0.lock().unwrap().len(), 3);
        ob.push(&[1, 2, 3]);
        assert_eq!(
            pool.0.lock().unwrap().len(),
            2,
            "the next block came from the pool"
        );
        assert_eq!(ob.block.capacity(), BLOCK);
    }

    /// The endpoint's socket gets the receive buffer asked for, as far as the kernel allows
    /// (`net.core.rmem_max`; Linux reports twice the size it keeps for bookkeeping).
    #[test]
    fn the_socket_gets_a_large_receive_buffer() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let got = receive_buffer(&sock).expect("the size is readable");
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(RECV_BUFFER);
        assert!(
            got >= RECV_BUFFER.min(max),
            "{got} < min({RECV_BUFFER}, {max})"
        );
    }

    /// Connections prefer AES-128-GCM, and offer every TLS 1.3 suite they did before.
    #[test]
    fn connections_prefer_aes_128_gcm() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut all: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        all.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, all);
    }

    fn bound(me: usize, size: usize, id: Identity) -> Bound {
        Bound::new(me, size, Trust::Pinned(id, Pins::default()), None, None).expect("bind")
    }

    /// `n` ranks in this process, each with a pinned certificate of its own, wired with
    /// `lookup(bounds' addresses, peer)`.
    fn ranks(
        n: usize,
        lookup: impl Fn(&[SocketAddr], usize) -> Option<SocketAddr> + Clone + Send + Sync + 'static,
    ) -> Vec<Quic> {
        let ids: Vec<Identity> = (0..n).map(|_| Identity::generate().unwrap()).collect();
        let pins: Vec<Fingerprint> = ids.iter().map(Identity::fingerprint).collect();
        let bounds: Vec<Bound> = ids
            .into_iter()
            .enumerate()
            .map(|(r, id)| bound(r, n, id))
            .collect();
        let addrs: Vec<SocketAddr> = bounds.iter().map(|b| b.local_addr().unwrap()).collect();
        bounds
            .into_iter()
            .map(|b| {
                b.pin(pins.clone()).unwrap();
                let (addrs, lookup) = (addrs.clone(), lookup.clone());
                Quic::wire(b, &[], None, Box::new(move |p| lookup(&addrs, p))).unwrap()
            })
            .collect()
    }

    fn read_all(q: &Quic, peer: usize, want: usize) -> Vec<u8> {
        let mut got = vec![0u8; want];
        let mut n = 0;
        let until = Instant::now() + Duration::from_secs(10);
        while n < want && Instant::now() < until {
            n += q.read(peer, &mut got[n..]).expect("read");
            if n < want {
                q.drive();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got.truncate(n);
        got
    }

    /// As the engine does: write all of `data` to `peer` (pushing after each write).
    fn send(q: &Quic, peer: usize, data: &[u8]) {
        let mut at = 0;
        while at < data.len() {
            at += q.write(peer, &data[at..]).expect("write");
            q.notify(peer);
            if at < data.len() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Write to `peer` until the transport says it is lost; why.
    fn until_lost(q: &Quic, peer: usize) -> String {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            match q.write(peer, b"x") {
                Err(Error::PeerLost { detail, .. }) => return detail,
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => q.notify(peer),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("rank {peer} never counted as lost");
    }

    /// Frames of nonblocking sends are held back (written, their writer told, but not run)
    /// until a flush, unless [`HOLD_BACK`] bytes are queued; what was held arrives whole
    /// and in order.
    #[test]
    fn frames_written_later_wait_for_a_flush_unless_many() {
        use crate::wire::{Encoding, Header};
        let q = ranks(2, |a, p| Some(a[p]));
        send(&q[0], 1, b"hi");
        assert_eq!(read_all(&q[1], 0, 2), b"hi");
        let frames: Vec<Vec<u8>> = (0..10u8)
            .map(|i| {
                let h = Header::data(0, 1, i.into(), 8, Encoding::Raw, 0);
                let n = q[0].write_frame_later(1, &h, &[i; 8]).unwrap();
                assert_eq!(n, HEADER_LEN + 8);
                [&h.encode()[..], &[i; 8]].concat()
            })
            .collect();
        assert!(q[0].held.load(SeqCst), "held back");
        q[0].flush();
        assert!(!q[0].held.load(SeqCst), "flushed");
        assert_eq!(read_all(&q[1], 0, 10 * (HEADER_LEN + 8)), frames.concat());
        let big = vec![3u8; HOLD_BACK];
        let h = Header::data(0, 1, 11, big.len() as u64, Encoding::Raw, 0);
        assert_eq!(
            q[0].write_frame_later(1, &h, &big).unwrap(),
            HEADER_LEN + HOLD_BACK
        );
        assert!(!q[0].held.load(SeqCst), "64 KiB are pushed at once");
        let got = read_all(&q[1], 0, HEADER_LEN + HOLD_BACK);
        assert_eq!(got, [&h.encode()[..], &big].concat());
    }

    /// Two ranks with self-signed certificates pinned by fingerprint (a job started by srun)
    /// connect when they first talk; a process with a certificate of its own is refused on
    /// both sides: as a client posing as rank 1 (rank 0 takes no connection from it, and
    /// then talks with the real rank 1), and as a server posing as rank 0 (rank 1's
    /// connection fails, and rank 0 counts as lost, saying why).
    #[test]
    fn pinned_ranks_connect_and_strangers_are_refused() {
        let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
        let pins = vec![ids[0].fingerprint(), ids[1].fingerprint()];
        let [id0, id1] = ids;
        let (b0, b1) = (bound(0, 2, id0), bound(1, 2, id1));
        b0.pin(pins.clone()).unwrap();
        b1.pin(pins.clone()).unwrap();
        let addrs = [b0.local_addr().unwrap(), b1.local_addr().unwrap()];
        let q0 = Quic::wire(b0, &[], None, Box::new(move |p| Some(addrs[p]))).unwrap();
        let q1 = Quic::wire(b1, &[], None, Box::new(move |p| Some(addrs[p]))).unwrap();
        assert_eq!((q0.connected(), q1.connected()), (0, 0), "connected early");

        // A stranger knows the pins and rank 0's address, and tries to be rank 1.
        let stranger = bound(1, 2, Identity::generate().unwrap());
        stranger.pin(pins.clone()).unwrap();
        let to_rank0 = addrs[0];
        let posed = Quic::wire(stranger, &[], None, Box::new(move |_| Some(to_rank0))).unwrap();
        // Its handshake completes on its side (TLS 1.3 checks the client last), then the
        // connection is refused: which error it sees varies.
        until_lost(&posed, 0);
        assert_eq!(q0.connected(), 0, "rank 0 took the stranger");

        send(&q1, 0, b"hello, pinned");
        assert_eq!(read_all(&q0, 1, 13), b"hello, pinned");
        send(&q0, 1, b"hi");
        assert_eq!(read_all(&q1, 0, 2), b"hi");
        assert_eq!((q0.connected(), q1.connected()), (1, 1));

        // A stranger serving at an address rank 1 takes for rank 0's.
        let fake0 = bound(0, 2, Identity::generate().unwrap());
        fake0.pin(pins.clone()).unwrap();
        let fake_addr = fake0.local_addr().unwrap();
        let _fake = Quic::wire(fake0, &[], None, Box::new(|_| None)).unwrap();
        let again = bound(1, 2, Identity::generate().unwrap());
        again.pin(pins).unwrap();
        let q = Quic::wire(again, &[], None, Box::new(move |_| Some(fake_addr))).unwrap();
        let why = until_lost(&q, 0);
        assert!(why.contains("connecting to rank 0"), "{why}");
        assert!(why.contains("certificate"), "{why}");
    }

    /// Two ranks dial each other at the same moment (both wrote before either knew the
    /// other's address): one connection is kept, the higher rank's, and what each wrote
    /// arrives once, in order, whichever rank is the lower.
    #[test]
    fn crossed_dials_keep_one_connection_and_lose_nothing() {
        for _ in 0..5 {
            let go = Arc::new(AtomicBool::new(false));
            let g = go.clone();
            let q = ranks(2, move |a, p| g.load(SeqCst).then(|| a[p]));
            let m: Vec<Vec<u8>> = (0..2u8)
                .map(|r| (0..200_000u32).map(|i| (i as u8) ^ r).collect())
                .collect();
            // Both write (and so dial) while neither can find the other.
            q[0].write(1, &m[0][..1000]).unwrap();
            q[1].write(0, &m[1][..1000]).unwrap();
            go.store(true, SeqCst);
            std::thread::scope(|s| {
                s.spawn(|| send(&q[0], 1, &m[0][1000..]));
                s.spawn(|| send(&q[1], 0, &m[1][1000..]));
                s.spawn(|| assert!(read_all(&q[1], 0, m[0].len()) == m[0], "0 to 1"));
                assert!(read_all(&q[0], 1, m[1].len()) == m[1], "1 to 0");
            });
            assert_eq!((q[0].connected(), q[1].connected()), (1, 1));
            // Nothing more arrives (nothing was written twice).
            std::thread::sleep(Duration::from_millis(50));
            assert!(!q[0].readable(1) && !q[1].readable(0), "bytes twice");
        }
    }

    /// Connections are made only between ranks that talk: `n` ranks passing a message
    /// round a ring hold two connections each, not `n - 1` (the simulation of start-up
    /// cost per rank: what each rank opens grows with whom it talks to, not with `n`);
    /// then everyone writing to everyone connects every pair, once.
    #[test]
    fn only_ranks_that_talk_connect() {
        let n = 12;
        let q = ranks(n, |a, p| Some(a[p]));
        std::thread::scope(|s| {
            for (r, qr) in q.iter().enumerate() {
                s.spawn(move || {
                    send(qr, (r + 1) % n, &[r as u8; 100]);
                    let prev = (r + n - 1) % n;
                    assert_eq!(read_all(qr, prev, 100), vec![prev as u8; 100]);
                });
            }
        });
        let held: Vec<usize> = q.iter().map(Quic::connected).collect();
        assert_eq!(held, vec![2; n], "connections per rank after a ring");
        std::thread::scope(|s| {
            for (r, qr) in q.iter().enumerate() {
                s.spawn(move || {
                    for p in (0..n).filter(|&p| p != r) {
                        send(qr, p, &[r as u8 + 100; 10]);
                    }
                    for p in (0..n).filter(|&p| p != r) {
                        assert_eq!(read_all(qr, p, 10), vec![p as u8 + 100; 10]);
                    }
                });
            }
        });
        let held: Vec<usize> = q.iter().map(Quic::connected).collect();
        assert_eq!(
            held,
            vec![n - 1; n],
            "connections per rank after all-to-all"
        );
    }
}
