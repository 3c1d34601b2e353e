//! QUIC transport (quinn on tokio): one connection per pair of ranks, mutually authenticated
//! with the job's credentials, which the launcher makes fresh for every job.
//!
//! Each connection carries two bidirectional streams, opened by the higher rank: one for
//! frames, one for the start-up acknowledgement. Tasks on a tokio runtime of the rank's own
//! move bytes between the streams and per-peer buffers; the engine reads and writes those
//! buffers without blocking. The rank's waiting threads drive that runtime themselves
//! ([`super::driver`]): no thread hand-off per message. At exit (an `atexit` handler) every
//! stream is finished and the process waits, briefly, until its peers have all of it: what a
//! rank sent last is not lost, and the peers see it leave at once.

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

/// Name every rank's certificate carries.
const SERVER_NAME: &str = "ranks-job";
const ALPN: &[u8] = b"ranks/1";
/// Bytes a peer's outgoing buffer may hold before `write` pushes back.
const OUT_LIMIT: usize = 8 << 20;
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

/// Server and client configurations that accept only the job's ranks, and the server name
/// to ask for when connecting to a rank.
fn configs(trust: &Trust) -> Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let tls = |e: rustls::Error| Error::Bootstrap(format!("TLS setup: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
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
    outbox: Mutex<bytes::BytesMut>,
    out_ready: tokio::sync::Notify,
    gone: AtomicBool,
    why: Mutex<Option<String>>,
    /// The peer's world rank.
    rank: usize,
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
    peers: Vec<Option<Arc<PeerIo>>>,
    signal: Arc<Signal>,
    driver: Arc<Driver>,
    _endpoint: quinn::Endpoint,
}

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
        let mut n = 0;
        while n < dst.len() {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = front.len().min(dst.len() - n);
            dst[n..n + k].copy_from_slice(&front[..k]);
            n += k;
            if k == front.len() {
                self.chunks.pop_front();
            } else {
                bytes::Buf::advance(front, k);
            }
        }
        self.len -= n;
        n
    }
}

/// A peer's connection and its two streams (frames, acknowledgements), each both ways.
type Wire = (
    usize,
    quinn::Connection,
    [(quinn::SendStream, quinn::RecvStream); 2],
);

fn addr_file(dir: &Path, rank: usize) -> std::path::PathBuf {
    dir.join(format!("r{rank}.addr"))
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
        match rt.block_on(async { quinn::Endpoint::server(server.clone(), addr) }) {
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
    /// Connect to every peer `p` with `remote[p]` (all peers when `remote` is empty), with
    /// the job's credentials and addresses in the job directory `dir`. `wake` (the
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
        let lookup = |peer: usize| -> Option<SocketAddr> {
            std::fs::read_to_string(addr_file(dir, peer))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        Quic::wire(bound, remote, wake, &lookup)
    }

    /// The second half: connect to every lower peer (its address from `lookup`, asked
    /// again until it knows) and accept every higher one.
    pub(crate) fn wire(
        bound: Bound,
        remote: &[bool],
        wake: Option<Waker>,
        lookup: &(dyn Fn(usize) -> Option<SocketAddr> + Sync),
    ) -> Result<Quic> {
        let Bound {
            rt,
            endpoint,
            trust,
            me,
            size,
        } = bound;
        let is_peer = |p: usize| p != me && (remote.is_empty() || remote[p]);
        let server_name = |peer: usize| match &trust {
            Trust::JobCa(_) => SERVER_NAME.to_string(),
            Trust::Pinned(..) => pinned_name(peer),
        };
        let signal = Arc::new(Signal {
            external: wake,
            ..Signal::default()
        });
        let peers: Vec<Option<Arc<PeerIo>>> = (0..size)
            .map(|p| is_peer(p).then(|| Arc::new(PeerIo::new(p))))
            .collect();
        let higher = (me + 1..size).filter(|&p| is_peer(p)).count();
        let deadline = Instant::now() + CONNECT_DEADLINE;
        let conns: Vec<Wire> = rt.block_on(async {
            let mut out = Vec::new();
            // Connect to every lower rank.
            for peer in (0..me).filter(|&p| is_peer(p)) {
                let addr: SocketAddr = loop {
                    if let Some(a) = lookup(peer) {
                        break a;
                    }
                    if Instant::now() > deadline {
                        return Err(Error::Bootstrap(format!(
                            "rank {peer} never published its QUIC address"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                };
                let conn = endpoint
                    .connect(addr, &server_name(peer))
                    .map_err(|e| {
                        Error::Bootstrap(format!("connecting to rank {peer} at {addr}: {e}"))
                    })?
                    .await
                    .map_err(|e| {
                        Error::Bootstrap(format!("connecting to rank {peer} at {addr}: {e}"))
                    })?;
                let (mut d_tx, d_rx) = conn
                    .open_bi()
                    .await
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                let (a_tx, a_rx) = conn
                    .open_bi()
                    .await
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                d_tx.write_all(&(me as u32).to_le_bytes())
                    .await
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                // A stream shows up at the peer only once it carries data: acknowledge 0.
                let mut a_tx = a_tx;
                a_tx.write_all(&0u64.to_le_bytes())
                    .await
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                out.push((peer, conn, [(d_tx, d_rx), (a_tx, a_rx)]));
            }
            // Accept every higher rank. A handshake that fails is someone without the job's
            // credentials (or a rank that gave up): it does not count, and does not stop us.
            let mut accepted = 0;
            while accepted < higher {
                let incoming = tokio::time::timeout_at(deadline.into(), endpoint.accept())
                    .await
                    .map_err(|_| {
                        Error::Bootstrap(format!("rank {me}: higher ranks never connected"))
                    })?
                    .ok_or_else(|| Error::Bootstrap("QUIC endpoint closed".into()))?;
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "refused a connection while wiring the job");
                        continue;
                    }
                };
                let (d_tx, mut d_rx) = conn
                    .accept_bi()
                    .await
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                let mut id = [0u8; 4];
                d_rx.read_exact(&mut id)
                    .await
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                let (mut a_tx, a_rx) = conn
                    .accept_bi()
                    .await
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                a_tx.write_all(&0u64.to_le_bytes())
                    .await
                    .map_err(|e| Error::Bootstrap(e.to_string()))?;
                let peer = u32::from_le_bytes(id) as usize;
                if peer < size {
                    check_pin(&trust, &conn, peer)?;
                }
                if peer <= me
                    || peer >= size
                    || !is_peer(peer)
                    || out.iter().any(|(p, _, _)| *p == peer)
                {
                    return Err(Error::Bootstrap(format!(
                        "unexpected greeting from rank {peer} at rank {me}"
                    )));
                }
                out.push((peer, conn, [(d_tx, d_rx), (a_tx, a_rx)]));
                accepted += 1;
            }
            // Both directions work once each side has heard the other's first acknowledgement.
            for (peer, _, [_, (_, a_rx)]) in out.iter_mut() {
                let mut b = [0u8; 8];
                tokio::time::timeout_at(deadline.into(), a_rx.read_exact(&mut b))
                    .await
                    .map_err(|_| Error::Bootstrap(format!("rank {peer} never answered")))?
                    .map_err(|e| Error::Bootstrap(format!("rank {peer}: {e}")))?;
            }
            Ok(out)
        })?;
        // Later connections are not part of the job's wiring: let the handshake (which checks
        // the job's credentials) run, then close whatever got through.
        let late = endpoint.clone();
        rt.spawn(async move {
            while let Some(incoming) = late.accept().await {
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => conn.close(1u32.into(), b"the job is already wired"),
                        Err(e) => tracing::warn!(error = %e, "refused a connection"),
                    }
                });
            }
        });
        let (exit_tx, exit_rx) = tokio::sync::watch::channel(false);
        let exit = Arc::new(ExitFlush {
            driver: rt.clone(),
            exiting: exit_tx,
            flushed: AtomicUsize::new(0),
            streams: 2 * conns.len(),
            conns: conns.iter().map(|(_, c, _)| c.clone()).collect(),
        });
        for (peer, conn, [(d_tx, d_rx), (a_tx, a_rx)]) in conns {
            let io = peers[peer].clone().expect("a peer");
            rt.spawn(reader(
                io.clone(),
                signal.clone(),
                d_rx,
                a_tx,
                exit_rx.clone(),
                exit.clone(),
            ));
            rt.spawn(writer(
                io.clone(),
                signal.clone(),
                d_tx,
                exit_rx.clone(),
                exit.clone(),
            ));
            rt.spawn(acks(a_rx));
            drop(conn);
        }
        // The helper first: the exit flush relies on it.
        rt.start()
            .map_err(|e| Error::io("starting the QUIC thread", e))?;
        if EXIT.set(exit).is_ok() {
            crate::at_exit::add(flush_at_exit);
        }
        Ok(Quic {
            peers,
            signal,
            driver: rt,
            _endpoint: endpoint,
        })
    }

    /// Run `sleep`, a wait on something else than this transport (a shared-memory doorbell,
    /// which the I/O tasks ring), with the helper thread driving QUIC meanwhile.
    pub(crate) fn asleep_elsewhere(&self, sleep: impl FnOnce()) {
        let _stand_in = self.driver.stand_in();
        sleep();
    }

    /// Sleep on the condition variable the I/O tasks signal (another thread drives).
    fn wait_signalled(&self, timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        let _waiting = Count::up(&self.signal.waiting);
        let before = *self.signal.seq.lock().unwrap_or_else(|p| p.into_inner());
        if !prepare() {
            let g = self.signal.seq.lock().unwrap_or_else(|p| p.into_inner());
            if *g == before {
                let _ = self.signal.cv.wait_timeout(g, timeout);
            }
        }
    }

    fn io(&self, peer: usize) -> Result<&Arc<PeerIo>> {
        self.peers
            .get(peer)
            .and_then(|p| p.as_ref())
            .ok_or(Error::InvalidRank {
                rank: peer as i64,
                size: self.peers.len(),
            })
    }
}

/// What the process does on its way out: finish every stream it sends on and wait (briefly)
/// until the peers have everything, so its last messages and acknowledgements are not lost
/// and the peers see a clean end of stream at once.
struct ExitFlush {
    driver: Arc<Driver>,
    exiting: tokio::sync::watch::Sender<bool>,
    flushed: AtomicUsize,
    streams: usize,
    conns: Vec<quinn::Connection>,
}

static EXIT: std::sync::OnceLock<Arc<ExitFlush>> = std::sync::OnceLock::new();

fn flush_at_exit() {
    let Some(exit) = EXIT.get() else { return };
    let _ = exit.exiting.send(true);
    let deadline = Instant::now() + Duration::from_secs(3);
    exit.driver
        .wait_until(|| exit.flushed.load(SeqCst) >= exit.streams, deadline);
    // Say goodbye on every connection: a peer that outlives us learns at once that we are
    // gone, instead of waiting for the idle timeout. Give the runtime a moment to send it.
    for c in exit.conns.iter() {
        c.close(0u32.into(), b"rank exited");
    }
    if !exit.conns.is_empty() {
        exit.driver
            .wait_until(|| false, Instant::now() + Duration::from_millis(5));
    }
}

/// Finish a stream we send on and wait until the peer has all of it (unless it is gone).
async fn finish(mut tx: quinn::SendStream, io: &PeerIo, exit: &ExitFlush) {
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
    exit.flushed.fetch_add(1, SeqCst);
}

/// Frames in: append to the inbox, signal the rank.
async fn reader(
    io: Arc<PeerIo>,
    signal: Arc<Signal>,
    mut rx: quinn::RecvStream,
    ack: quinn::SendStream,
    mut exiting: tokio::sync::watch::Receiver<bool>,
    exit: Arc<ExitFlush>,
) {
    loop {
        while io.inbox.lock().unwrap_or_else(|p| p.into_inner()).len > IN_LIMIT {
            tokio::select! {
                _ = io.inbox_space.notified() => {}
                // Exiting with a full inbox: stop reading (below) rather than wait for room.
                _ = exiting.changed() => break,
            }
        }
        let got = tokio::select! {
            r = rx.read_chunk(usize::MAX, true) => r.map(|c| c.map(|c| c.bytes)),
            _ = exiting.changed() => {
                // We read no more: tell the peer at once, so it does not wait for us.
                let _ = rx.stop(0u32.into());
                finish(ack, &io, &exit).await;
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
    let _ = exiting.changed().await;
    finish(ack, &io, &exit).await;
}

/// Frames out: drain the outbox into the stream.
async fn writer(
    io: Arc<PeerIo>,
    signal: Arc<Signal>,
    mut tx: quinn::SendStream,
    mut exiting: tokio::sync::watch::Receiver<bool>,
    exit: Arc<ExitFlush>,
) {
    loop {
        // Everything written so far, handed to quinn as it is (no copy).
        let chunk = io
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .split()
            .freeze();
        if chunk.is_empty() {
            if *exiting.borrow() {
                break;
            }
            tokio::select! {
                _ = io.out_ready.notified() => {}
                _ = exiting.changed() => {}
            }
            continue;
        }
        if let Err(e) = tx.write_chunk(chunk).await {
            io.lose(format!("writing to it failed: {e}"));
            signal.bump();
            let _ = exiting.changed().await;
            break;
        }
        signal.bump();
    }
    finish(tx, &io, &exit).await;
}

/// The acknowledgement stream, read to its end (which the peer's exit flush waits for). Only
/// the first acknowledgement, at start-up, says anything: that both directions work. (Later
/// ones used to wake a rank asleep on a condition variable; waiting threads now drive the
/// runtime themselves.)
async fn acks(mut rx: quinn::RecvStream) {
    let mut b = [0u8; 8];
    while rx.read_exact(&mut b).await.is_ok() {}
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
        let n = {
            let mut ob = io.outbox.lock().unwrap_or_else(|p| p.into_inner());
            let n = buf.len().min(OUT_LIMIT.saturating_sub(ob.len()));
            ob.extend_from_slice(&buf[..n]);
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

    fn readable(&self, peer: usize) -> bool {
        self.peers[peer]
            .as_ref()
            .is_some_and(|io| io.inbox.lock().unwrap_or_else(|p| p.into_inner()).len > 0)
    }

    /// After writes to `peer`: its writer task takes them, and this thread runs it now.
    fn notify(&self, peer: usize) {
        if let Ok(io) = self.io(peer) {
            io.out_ready.notify_one();
            self.driver.push();
        }
    }

    fn drive(&self) {
        self.driver.tick();
    }

    fn wake_self(&self) {
        self.signal.bump();
    }

    fn wait(&self, _want_write: &[usize], timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        if self.driver.can_drive() {
            // Park in the runtime, driving it, until its tasks signal. Registered before
            // `prepare` looks, so a signal after that look is not lost.
            let notified = self.signal.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _parked = Count::up(&self.signal.parked);
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
        let io = self.peers.get(peer)?.as_ref()?;
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

    fn bound(me: usize, id: Identity) -> Bound {
        Bound::new(me, 2, Trust::Pinned(id, Pins::default()), None, None).expect("bind")
    }

    fn read_all(q: &Quic, peer: usize, want: usize) -> Vec<u8> {
        let mut got = vec![0u8; want];
        let mut n = 0;
        let until = Instant::now() + Duration::from_secs(10);
        while n < want && Instant::now() < until {
            n += q.read(peer, &mut got[n..]).expect("read");
            if n < want {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got.truncate(n);
        got
    }

    /// Two ranks with self-signed certificates pinned by fingerprint (a job started by srun)
    /// connect and talk; a process with a certificate of its own is refused on both sides:
    /// as a client (rank 0 goes on accepting and wires with the real rank 1), and as a
    /// server posing as rank 0 (rank 1's handshake fails).
    #[test]
    fn pinned_ranks_connect_and_strangers_are_refused() {
        let ids = [Identity::generate().unwrap(), Identity::generate().unwrap()];
        let pins = vec![ids[0].fingerprint(), ids[1].fingerprint()];
        let [id0, id1] = ids;
        let (b0, b1) = (bound(0, id0), bound(1, id1));
        b0.pin(pins.clone()).unwrap();
        b1.pin(pins.clone()).unwrap();
        let addrs = [b0.local_addr().unwrap(), b1.local_addr().unwrap()];

        // A stranger knows the pins and rank 0's address, and tries to be rank 1.
        let stranger = bound(1, Identity::generate().unwrap());
        stranger.pin(pins.clone()).unwrap();
        let to_rank0 = addrs[0];
        let posed = std::thread::spawn(move || {
            Quic::wire(stranger, &[], None, &|_| Some(to_rank0)).map(drop)
        });
        let r0 = std::thread::spawn(move || Quic::wire(b0, &[], None, &|p| Some(addrs[p])));
        // Its handshake completes on its side (TLS 1.3 checks the client last), then the
        // connection is refused: which error it sees first varies.
        posed.join().unwrap().expect_err("the stranger got in");
        let q1 = Quic::wire(b1, &[], None, &|p| Some(addrs[p])).expect("rank 1 wires");
        let q0 = r0.join().unwrap().expect("rank 0 wires");
        // As the engine does: write, then notify (which sends).
        q1.write(0, b"hello, pinned").unwrap();
        q1.notify(0);
        assert_eq!(read_all(&q0, 1, 13), b"hello, pinned");
        q0.write(1, b"hi").unwrap();
        q0.notify(1);
        assert_eq!(read_all(&q1, 0, 2), b"hi");

        // A stranger serving at an address rank 1 takes for rank 0's.
        let fake0 = bound(0, Identity::generate().unwrap());
        fake0.pin(pins.clone()).unwrap();
        let fake_addr = fake0.local_addr().unwrap();
        std::thread::spawn(move || Quic::wire(fake0, &[], None, &|_| None).map(drop));
        let again = bound(1, Identity::generate().unwrap());
        again.pin(pins).unwrap();
        let e = Quic::wire(again, &[], None, &|_| Some(fake_addr))
            .map(drop)
            .expect_err("rank 1 trusted a stranger as rank 0");
        assert!(e.to_string().contains("connecting to rank 0"), "{e}");
        assert!(e.to_string().contains("certificate"), "{e}");
    }
}
