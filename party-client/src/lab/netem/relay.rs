//! The relay: [`Netem`], its sockets and its threads.
//!
//! [`Netem::start`] binds the listen socket and starts three threads: one departure
//! thread per direction (`Direction::run_departures`) and one thread that runs a
//! single-threaded tokio runtime for the sockets. On that runtime, `relay` reads the
//! listen socket: the first datagram from a new client address opens a flow
//! (`open_flow`: a socket connected to `--forward` and a task that reads the server's
//! answers), and every datagram is handed to the upstream link, to leave on that
//! flow's socket. Answers are handed to the downstream link, to leave on the listen
//! socket toward the client. Flows idle for long are closed when the table grows.
//! [`Netem::stop`] (or dropping the handle) stops the runtime and the departure
//! threads and joins them.

use super::link::{Direction, Out};
use super::stats::NetemStats;
use super::{LinkConfig, NetemConfig};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running emulator. Dropping it stops it.
pub struct Netem {
    listen: SocketAddr,
    forward: SocketAddr,
    started: Instant,
    upstream: Arc<Direction>,
    downstream: Arc<Direction>,
    flows: Arc<std::sync::atomic::AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn nonblocking_pair(sock: StdUdpSocket) -> Result<(tokio::net::UdpSocket, Arc<StdUdpSocket>)> {
    let send = sock.try_clone().context("cloning a UDP socket")?;
    sock.set_nonblocking(true).context("making a UDP socket non-blocking")?;
    let recv = tokio::net::UdpSocket::from_std(sock).context("registering a UDP socket")?;
    Ok((recv, Arc::new(send)))
}

fn socket_buffers(sock: &StdUdpSocket) {
    // Big buffers so that bursts at high rates are shaped by us, not lost by the kernel.
    let s = socket2::SockRef::from(sock);
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
}

impl Netem {
    /// Binds `config.listen` and starts relaying to `config.forward`.
    pub fn start(config: NetemConfig) -> Result<Netem> {
        config.upstream.validate()?;
        config.downstream.validate()?;
        let listen_std = StdUdpSocket::bind(config.listen)
            .with_context(|| format!("netem: cannot listen on {}", config.listen))?;
        socket_buffers(&listen_std);
        let listen = listen_std.local_addr()?;
        let upstream = Arc::new(Direction::new(config.upstream.clone(), config.seed));
        let downstream =
            Arc::new(Direction::new(config.downstream.clone(), config.seed ^ 0x9e37_79b9_7f4a_7c15));
        let flows = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("netem: starting its runtime")?;
        let mut threads = Vec::new();
        for (name, d) in [("netem-upstream", upstream.clone()), ("netem-downstream", downstream.clone())] {
            threads.push(std::thread::Builder::new().name(name.into()).spawn(move || d.run_departures())?);
        }
        let (up, down, fl, forward) = (upstream.clone(), downstream.clone(), flows.clone(), config.forward);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        threads.push(std::thread::Builder::new().name("netem-relay".into()).spawn(move || {
            rt.block_on(async move {
                let pair = match nonblocking_pair(listen_std) {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                tokio::select! {
                    _ = relay(pair, forward, up, down, fl) => {}
                    _ = rx => {}
                }
            });
            // Dropping the runtime here cancels the per-flow tasks.
        })?);
        // From here on, dropping `netem` stops every thread it started.
        let netem = Netem {
            listen,
            forward: config.forward,
            started: Instant::now(),
            upstream,
            downstream,
            flows,
            shutdown: Some(tx),
            threads,
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(netem),
            Ok(Err(e)) => Err(e),
            Err(_) => anyhow::bail!("netem: the relay thread did not start within 10 s"),
        }
    }

    /// The address clients connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Counters so far.
    pub fn stats(&self) -> NetemStats {
        NetemStats {
            listen: self.listen.to_string(),
            forward: self.forward.to_string(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            flows: self.flows.load(std::sync::atomic::Ordering::Relaxed),
            upstream: self.upstream.stats(),
            downstream: self.downstream.stats(),
        }
    }

    /// Changes the links from now on (datagrams already admitted keep their schedule):
    /// a link that degrades or dies in the middle of a session.
    pub fn set_links(&self, upstream: LinkConfig, downstream: LinkConfig) -> Result<()> {
        upstream.validate()?;
        downstream.validate()?;
        self.upstream.set_link(upstream);
        self.downstream.set_link(downstream);
        Ok(())
    }

    /// Stops relaying (datagrams still in flight are dropped) and returns the counters.
    pub fn stop(mut self) -> NetemStats {
        self.shutdown_now();
        self.stats()
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.upstream.stop();
        self.downstream.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Flows with no datagram from their client for this long are closed once the table
/// holds more than [`MAX_IDLE_FLOWS`] of them.
const FLOW_IDLE: Duration = Duration::from_secs(120);
/// See [`FLOW_IDLE`].
const MAX_IDLE_FLOWS: usize = 64;

struct Flow {
    socket: Arc<StdUdpSocket>,
    last_seen: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// Reads the listen socket; each new client address gets a socket toward `forward` and
/// a task that reads the server's answers.
async fn relay(
    (listen, listen_send): (tokio::net::UdpSocket, Arc<StdUdpSocket>),
    forward: SocketAddr,
    up: Arc<Direction>,
    down: Arc<Direction>,
    flows_seen: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match listen.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier sends surface here on some systems: not fatal.
            Err(_) => continue,
        };
        let arrival = Instant::now();
        if !flows.contains_key(&from) {
            if flows.len() > MAX_IDLE_FLOWS {
                flows.retain(|_, f| {
                    let keep = arrival.duration_since(f.last_seen) < FLOW_IDLE;
                    if !keep {
                        f.task.abort();
                    }
                    keep
                });
            }
            match open_flow(forward, from, listen_send.clone(), down.clone()) {
                Ok((socket, task)) => {
                    flows_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    flows.insert(from, Flow { socket, last_seen: arrival, task });
                }
                Err(e) => {
                    tracing::warn!("netem: cannot open a flow for {from}: {e:#}");
                    continue;
                }
            }
        }
        let Some(flow) = flows.get_mut(&from) else { continue };
        flow.last_seen = arrival;
        up.admit(buf[..n].to_vec(), arrival, Out::Connected(flow.socket.clone()));
    }
}

fn open_flow(
    forward: SocketAddr,
    client: SocketAddr,
    listen_send: Arc<StdUdpSocket>,
    down: Arc<Direction>,
) -> Result<(Arc<StdUdpSocket>, tokio::task::JoinHandle<()>)> {
    let local: IpAddr = match forward.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = StdUdpSocket::bind(SocketAddr::new(local, 0))?;
    socket_buffers(&sock);
    sock.connect(forward)?;
    let (recv, send) = nonblocking_pair(sock)?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            match recv.recv(&mut buf).await {
                Ok(n) => down.admit(buf[..n].to_vec(), Instant::now(), Out::To(listen_send.clone(), client)),
                // The server is not (yet) there: ICMP port unreachable. Keep the flow.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    Ok((send, task))
}
