//! [`QuicChannel`]: one connection as a [`Channel`]. One task accepts the peer's
//! streams (one per lane), one task per stream reassembles frames into the lane's
//! bounded inbox, and one writer task per lane sends; the caller's thread only waits on
//! condition variables.

use super::*;

/// Why the connection is no longer usable; turned into a [`TransportError`] per call.
#[derive(Clone, Debug)]
enum Gone {
    Closed { code: u64, reason: String },
    Local(String),
    IdleTimeout(Duration),
    Protocol(String),
    Malformed { lane: Lane, problem: String },
    CertRejected(String),
    Other(String),
}

impl Gone {
    fn from_connection(e: &ConnectionError, idle: Duration, own_fp: &str) -> Gone {
        match e {
            ConnectionError::ApplicationClosed(ac) => Gone::Closed {
                code: ac.error_code.into_inner(),
                reason: String::from_utf8_lossy(&ac.reason).into_owned(),
            },
            ConnectionError::TimedOut => Gone::IdleTimeout(idle),
            ConnectionError::LocallyClosed => Gone::Local("this side closed the connection".into()),
            ConnectionError::Reset => {
                Gone::Other("the peer reset the connection (it probably restarted)".into())
            }
            ConnectionError::ConnectionClosed(cc) if is_certificate_alert(cc.error_code) => {
                Gone::CertRejected(own_fp.to_string())
            }
            other => Gone::Other(format!("connection failed: {other}")),
        }
    }

    fn from_transport(e: TransportError) -> Gone {
        match e {
            TransportError::Malformed { lane, problem } => Gone::Malformed { lane, problem },
            other => Gone::Protocol(other.to_string()),
        }
    }

    fn to_error(&self, peer: &str) -> TransportError {
        let peer = peer.to_string();
        match self.clone() {
            Gone::Closed { code, reason } => crate::closed_by_peer(peer, code, &reason),
            Gone::Local(reason) | Gone::Other(reason) => TransportError::PeerGone { peer, reason },
            Gone::IdleTimeout(after) => {
                TransportError::Timeout { peer, what: "any packet (QUIC idle timeout)".into(), after }
            }
            Gone::Protocol(problem) => TransportError::Protocol { peer, problem },
            Gone::Malformed { lane, problem } => TransportError::Malformed { lane, problem },
            Gone::CertRejected(own_fp) => TransportError::Setup(format!(
                "{peer} rejected our certificate {own_fp}: ask its operator to allow this fingerprint"
            )),
        }
    }
}

#[derive(Default)]
struct Inbox {
    lanes: HashMap<Lane, VecDeque<Vec<u8>>>,
    open_lanes: Vec<Lane>,
    gone: Option<Gone>,
    /// Payload bytes handed to writer tasks and not yet written to QUIC.
    queued_send: usize,
    /// Received payload bytes queued and not yet read.
    queued_recv: usize,
    /// Reader tasks waiting for room under the receive budget: their lane and how many
    /// bytes they need.
    stalled: Vec<(Lane, usize)>,
}

/// State shared by the channel (consumer) and its reader/writer tasks (producers).
struct Shared {
    inbox: Mutex<Inbox>,
    ready: Condvar,
    /// [`QuicConfig::recv_budget`], as the session set it.
    recv_budget: std::sync::atomic::AtomicUsize,
    /// Signalled when the consumer takes a message (room under the budget).
    room: tokio::sync::Notify,
}

impl Shared {
    fn new(recv_budget: usize) -> Self {
        Shared {
            inbox: Mutex::default(),
            ready: Condvar::new(),
            recv_budget: recv_budget.into(),
            room: tokio::sync::Notify::new(),
        }
    }

    fn budget(&self) -> usize {
        self.recv_budget.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `need` more bytes fit under the receive budget. A message that can
    /// never fit is a protocol violation.
    async fn room_for(&self, lane: Lane, need: usize) -> Result<(), Gone> {
        let mut waiting = false;
        loop {
            let budget = self.budget();
            if need > budget {
                return Err(Gone::Protocol(format!(
                    "lane {lane:?} carries a message of at least {need} bytes, more than this session's receive budget of {budget} bytes"
                )));
            }
            {
                let mut inbox = lock(&self.inbox);
                if inbox.gone.is_some() || inbox.queued_recv + need <= budget {
                    if waiting {
                        if let Some(i) = inbox.stalled.iter().position(|w| *w == (lane, need)) {
                            inbox.stalled.swap_remove(i);
                        }
                    }
                    return Ok(());
                }
                if !waiting {
                    inbox.stalled.push((lane, need));
                    waiting = true;
                }
            }
            // Wake a consumer that may be waiting on another lane: it reports the flood.
            self.ready.notify_all();
            let _ = tokio::time::timeout(Duration::from_millis(20), self.room.notified()).await;
        }
    }

    fn set_gone(&self, gone: Gone) {
        let mut inbox = lock(&self.inbox);
        if inbox.gone.is_none() {
            inbox.gone = Some(gone);
        }
        drop(inbox);
        self.ready.notify_all();
    }

    fn gone(&self) -> Option<Gone> {
        lock(&self.inbox).gone.clone()
    }

    fn release_send(&self, len: usize) {
        let mut inbox = lock(&self.inbox);
        inbox.queued_send = inbox.queued_send.saturating_sub(len);
        drop(inbox);
        self.ready.notify_all();
    }
}

struct LaneWriter {
    encoder: FrameEncoder,
    tx: mpsc::UnboundedSender<(Vec<Bytes>, usize)>,
    task: tokio::task::JoinHandle<()>,
}

/// One end of a QUIC connection, as a [`Channel`].
pub struct QuicChannel {
    conn: Connection,
    shared: Arc<Shared>,
    writers: HashMap<Lane, LaneWriter>,
    counters: Counters,
    timeouts: Timeouts,
    max_frame: u32,
    send_buffer: usize,
    peer: String,
    peer_fingerprint: String,
    own_fingerprint: String,
    closed: bool,
    /// The client's own endpoint (drained on close); `None` on the server side.
    endpoint: Option<Endpoint>,
    /// Last: the runtime must outlive every handle above.
    rt: Arc<Rt>,
}

impl std::fmt::Debug for QuicChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicChannel")
            .field("peer", &self.peer)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl QuicChannel {
    pub(super) fn new(
        rt: Arc<Rt>,
        endpoint: Option<Endpoint>,
        conn: Connection,
        cfg: &QuicConfig,
        peer: String,
        peer_fingerprint: String,
        own_fingerprint: String,
    ) -> QuicChannel {
        let shared = Arc::new(Shared::new(cfg.recv_budget));
        rt.handle.spawn(demux(
            conn.clone(),
            shared.clone(),
            cfg.limits,
            cfg.timeouts.idle,
            own_fingerprint.clone(),
        ));
        QuicChannel {
            conn,
            shared,
            writers: HashMap::new(),
            counters: Counters::default(),
            timeouts: cfg.timeouts,
            max_frame: cfg.limits.max_frame,
            send_buffer: cfg.send_buffer,
            peer,
            peer_fingerprint,
            own_fingerprint,
            closed: false,
            endpoint,
            rt,
        }
    }

    /// Sets the receive budget ([`QuicConfig::recv_budget`]): what a session's declared
    /// shape needs at most. Readers waiting for room re-check at once.
    pub fn set_recv_budget(&mut self, bytes: usize) {
        self.shared.recv_budget.store(bytes, std::sync::atomic::Ordering::SeqCst);
        self.shared.room.notify_waiters();
    }

    /// The peer's certificate fingerprint.
    pub fn peer_fingerprint(&self) -> &str {
        &self.peer_fingerprint
    }

    /// The peer's UDP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The current smoothed round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// The UDP payload size the connection currently sends (path MTU discovery's result
    /// so far, within [`QuicConfig::max_udp_payload`]).
    pub fn path_mtu(&self) -> u16 {
        self.conn.stats().path.current_mtu
    }

    /// UDP bytes (sent, received) on this connection so far, including QUIC, TLS and
    /// retransmissions: the real wire cost next to [`Counters`]' payload and framing.
    pub fn udp_bytes(&self) -> (u64, u64) {
        let stats = self.conn.stats();
        (stats.udp_tx.bytes, stats.udp_rx.bytes)
    }

    /// Waits until `len` more bytes fit in the send buffer, and reserves them.
    fn reserve_send(&self, lane: Lane, len: usize) -> Result<()> {
        let deadline = Instant::now() + self.timeouts.recv;
        let mut inbox = lock(&self.shared.inbox);
        loop {
            if let Some(g) = &inbox.gone {
                return Err(g.to_error(&self.peer));
            }
            if inbox.queued_send == 0 || inbox.queued_send + len <= self.send_buffer {
                inbox.queued_send += len;
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::Timeout {
                    peer: self.peer.clone(),
                    what: format!(
                        "the network to take {} queued bytes before a send on lane {lane:?}",
                        inbox.queued_send
                    ),
                    after: self.timeouts.recv,
                });
            }
            inbox = self
                .shared
                .ready
                .wait_timeout(inbox, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.closed {
            return Err(TransportError::PeerGone {
                peer: self.peer.clone(),
                reason: "this side already closed the channel".into(),
            });
        }
        match self.shared.gone() {
            Some(g) => Err(g.to_error(&self.peer)),
            None => Ok(()),
        }
    }

    /// Flushes what was sent (bounded by the idle timeout), then closes the connection
    /// with `code` (see [`close_code`]) and `reason`; the peer's receives fail with both.
    pub fn close(&mut self, code: u32, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Before the connection closes, so our own receives report this reason rather
        // than a bare "locally closed" (a reason the peer gave first is kept).
        self.shared.set_gone(Gone::Local(format!("this side closed the channel ({reason})")));
        let tasks: Vec<_> = self
            .writers
            .drain()
            .map(|(_, w)| {
                drop(w.tx);
                w.task
            })
            .collect();
        let conn = self.conn.clone();
        let endpoint = self.endpoint.clone();
        let linger = self.timeouts.idle;
        let reason_bytes = reason.as_bytes().to_vec();
        let _ = self.rt.run(async move {
            let _ = tokio::time::timeout(linger, async {
                for t in tasks {
                    let _ = t.await;
                }
            })
            .await;
            conn.close(VarInt::from_u32(code), &reason_bytes);
            if let Some(ep) = endpoint {
                let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
            }
        });
    }

    /// Test hook: stop the network runtime without closing, as if the process died.
    #[cfg(test)]
    pub(super) fn crash(mut self) {
        self.closed = true;
        if let Some(rt) = Arc::get_mut(&mut self.rt).and_then(|r| r.rt.take()) {
            rt.shutdown_background();
        }
    }
}

impl Channel for QuicChannel {
    fn send_bytes(&mut self, lane: Lane, payload: &[u8]) -> Result<()> {
        self.send_vec(lane, payload.to_vec())
    }

    fn send_vec(&mut self, lane: Lane, payload: Vec<u8>) -> Result<()> {
        self.check_usable()?;
        let len = payload.len();
        self.reserve_send(lane, len)?;
        let (writer, opened) = match self.writers.entry(lane) {
            Entry::Occupied(o) => (o.into_mut(), false),
            Entry::Vacant(v) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let task = self.rt.handle.spawn(write_lane(
                    self.conn.clone(),
                    lane,
                    rx,
                    self.shared.clone(),
                    self.timeouts.idle,
                    self.own_fingerprint.clone(),
                ));
                (v.insert(LaneWriter { encoder: FrameEncoder::new(self.max_frame), tx, task }), true)
            }
        };
        let msg = writer.encoder.encode(Bytes::from(payload));
        let framing = msg.framing_len + if opened { LANE_PREAMBLE_LEN } else { 0 };
        if writer.tx.send((msg.chunks, len)).is_err() {
            // The writer stopped: it recorded why.
            return Err(self
                .shared
                .gone()
                .unwrap_or(Gone::Other("lane writer stopped".into()))
                .to_error(&self.peer));
        }
        self.counters.on_send(lane, len, framing);
        Ok(())
    }

    fn recv_bytes(&mut self, lane: Lane) -> Result<Vec<u8>> {
        self.recv_bytes_within(lane, self.timeouts.recv)
    }

    fn recv_bytes_within(&mut self, lane: Lane, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut inbox = lock(&self.shared.inbox);
        loop {
            if let Some(msg) = inbox.lanes.get_mut(&lane).and_then(VecDeque::pop_front) {
                inbox.queued_recv = inbox.queued_recv.saturating_sub(msg.len());
                drop(inbox);
                self.shared.room.notify_waiters();
                self.counters.on_recv(lane, msg.len());
                return Ok(msg);
            }
            if let Some(g) = &inbox.gone {
                return Err(g.to_error(&self.peer));
            }
            let (queued, budget) = (inbox.queued_recv, self.shared.budget());
            if !inbox.stalled.is_empty() && inbox.stalled.iter().all(|(_, need)| queued + need > budget) {
                // The budget is full of messages on lanes we are not reading, and we
                // read nothing else until `lane` has data: no progress is possible.
                let unread: Vec<String> = inbox
                    .lanes
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(l, q)| format!("{l:?}: {} bytes", q.iter().map(Vec::len).sum::<usize>()))
                    .collect();
                let problem = format!(
                    "the peer filled this session's receive budget of {budget} bytes with messages nobody reads ({}) while this party waits on lane {lane:?}",
                    unread.join(", ")
                );
                drop(inbox);
                self.shared.set_gone(Gone::Protocol(problem.clone()));
                self.conn.close(VarInt::from_u32(close_code::PROTOCOL_VIOLATION), problem.as_bytes());
                return Err(TransportError::Protocol { peer: self.peer.clone(), problem });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::Timeout {
                    peer: self.peer.clone(),
                    what: format!("a message on lane {lane:?}"),
                    after: timeout,
                });
            }
            inbox = self
                .shared
                .ready
                .wait_timeout(inbox, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn counters(&self) -> Counters {
        self.counters.clone()
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn close(&mut self, code: u32, reason: &str) {
        QuicChannel::close(self, code, reason);
    }

    fn set_recv_budget(&mut self, bytes: usize) {
        QuicChannel::set_recv_budget(self, bytes);
    }
}

impl Drop for QuicChannel {
    fn drop(&mut self) {
        self.close(close_code::DROPPED, "channel dropped");
    }
}

/// Accepts the peer's lane streams and spawns a reader per stream; records why the
/// connection ended.
async fn demux(conn: Connection, shared: Arc<Shared>, limits: FrameLimits, idle: Duration, own_fp: String) {
    loop {
        match conn.accept_uni().await {
            Ok(stream) => {
                tokio::spawn(read_lane(stream, conn.clone(), shared.clone(), limits, idle, own_fp.clone()));
            }
            Err(e) => {
                shared.set_gone(Gone::from_connection(&e, idle, &own_fp));
                return;
            }
        }
    }
}

async fn read_lane(
    mut stream: quinn::RecvStream,
    conn: Connection,
    shared: Arc<Shared>,
    limits: FrameLimits,
    idle: Duration,
    own_fp: String,
) {
    if let Err(gone) = read_lane_inner(&mut stream, &shared, limits, idle, &own_fp).await {
        if let Gone::Protocol(p) | Gone::Malformed { problem: p, .. } = &gone {
            let reason = format!("protocol violation: {p}");
            shared.set_gone(gone.clone());
            conn.close(VarInt::from_u32(close_code::PROTOCOL_VIOLATION), reason.as_bytes());
        } else {
            shared.set_gone(gone);
        }
    }
}

fn read_error(e: quinn::ReadError, lane: Option<Lane>, idle: Duration, own_fp: &str) -> Gone {
    match e {
        quinn::ReadError::ConnectionLost(c) => Gone::from_connection(&c, idle, own_fp),
        quinn::ReadError::Reset(code) => {
            Gone::Protocol(format!("the peer reset lane {lane:?} with code {code}"))
        }
        other => Gone::Other(format!("reading lane {lane:?}: {other}")),
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end of stream before the first
/// byte.
async fn read_full(
    stream: &mut quinn::RecvStream,
    buf: &mut [u8],
    lane: Option<Lane>,
    idle: Duration,
    own_fp: &str,
) -> std::result::Result<bool, Gone> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await {
            Ok(Some(n)) => filled += n,
            Ok(None) if filled == 0 => return Ok(false),
            Ok(None) => {
                return Err(Gone::Protocol(format!(
                    "lane {lane:?} ended inside a frame ({filled} of {} bytes)",
                    buf.len()
                )))
            }
            Err(e) => return Err(read_error(e, lane, idle, own_fp)),
        }
    }
    Ok(true)
}

async fn read_lane_inner(
    stream: &mut quinn::RecvStream,
    shared: &Shared,
    limits: FrameLimits,
    idle: Duration,
    own_fp: &str,
) -> std::result::Result<(), Gone> {
    let mut id = [0u8; LANE_PREAMBLE_LEN];
    if !read_full(stream, &mut id, None, idle, own_fp).await? {
        return Ok(());
    }
    let id = u16::from_le_bytes(id);
    let lane =
        Lane::from_id(id).ok_or_else(|| Gone::Protocol(format!("stream opened for unknown lane id {id}")))?;
    {
        let mut inbox = lock(&shared.inbox);
        if inbox.open_lanes.contains(&lane) {
            return Err(Gone::Protocol(format!("a second stream was opened for lane {lane:?}")));
        }
        inbox.open_lanes.push(lane);
    }
    let mut reassembler = Reassembler::new(lane, limits);
    let mut header = [0u8; HEADER_LEN];
    loop {
        if !read_full(stream, &mut header, Some(lane), idle, own_fp).await? {
            if reassembler.mid_message() {
                return Err(Gone::Protocol(format!(
                    "lane {lane:?} ended in the middle of a chunked message"
                )));
            }
            return Ok(());
        }
        let h = FrameHeader::decode(&header);
        reassembler.check(&h).map_err(Gone::from_transport)?;
        // Room under the receive budget before anything is allocated for the payload.
        shared.room_for(lane, reassembler.partial_len() + h.len as usize).await?;
        reassembler.begin_frame(&h).map_err(Gone::from_transport)?;
        while reassembler.frame_remaining() > 0 {
            match stream.read_chunk(reassembler.frame_remaining(), true).await {
                Ok(Some(chunk)) => {
                    reassembler.extend(&chunk.bytes);
                }
                Ok(None) => {
                    return Err(Gone::Protocol(format!(
                        "lane {lane:?} ended inside the payload of frame {}",
                        h.seq
                    )))
                }
                Err(e) => return Err(read_error(e, Some(lane), idle, own_fp)),
            }
        }
        if let Some(msg) = reassembler.finish_frame() {
            let mut inbox = lock(&shared.inbox);
            inbox.queued_recv += msg.len();
            inbox.lanes.entry(lane).or_default().push_back(msg);
            drop(inbox);
            shared.ready.notify_all();
        }
    }
}

async fn write_lane(
    conn: Connection,
    lane: Lane,
    mut rx: mpsc::UnboundedReceiver<(Vec<Bytes>, usize)>,
    shared: Arc<Shared>,
    idle: Duration,
    own_fp: String,
) {
    let write_err = |e: quinn::WriteError| match e {
        quinn::WriteError::ConnectionLost(c) => Gone::from_connection(&c, idle, &own_fp),
        quinn::WriteError::Stopped(code) => {
            Gone::Protocol(format!("the peer stopped reading lane {lane:?} (code {code})"))
        }
        other => Gone::Other(format!("writing lane {lane:?}: {other}")),
    };
    let result = async {
        let mut stream = conn.open_uni().await.map_err(|e| Gone::from_connection(&e, idle, &own_fp))?;
        stream.write_all(&lane.id().to_le_bytes()).await.map_err(write_err)?;
        while let Some((mut chunks, len)) = rx.recv().await {
            stream.write_all_chunks(&mut chunks).await.map_err(write_err)?;
            shared.release_send(len);
        }
        // The channel is closing: end the stream and wait until the peer has everything.
        if stream.finish().is_ok() {
            let _ = stream.stopped().await;
        }
        Ok::<(), Gone>(())
    }
    .await;
    if let Err(gone) = result {
        shared.set_gone(gone);
    }
}
