//! The two binaries as a user runs them. Integration tests of `shardlm-client` know its
//! path (`env!("CARGO_BIN_EXE_shardlm-client")`); the server binary is built next to it
//! by `cargo test --workspace`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Paths of both binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `shardlm-client`.
    pub client: PathBuf,
    /// `shardlm-server`.
    pub server: PathBuf,
}

impl Binaries {
    /// The binaries next to `client` (from `env!("CARGO_BIN_EXE_shardlm-client")`).
    pub fn beside_client(client: &str) -> Self {
        let client = PathBuf::from(client);
        let server = client.with_file_name(format!("shardlm-server{}", std::env::consts::EXE_SUFFIX));
        assert!(
            server.exists(),
            "{} missing: run the workspace tests (`cargo test --workspace`)",
            server.display()
        );
        Binaries { client, server }
    }

    /// A `shardlm-client` command.
    pub fn client(&self) -> Command {
        Command::new(&self.client)
    }

    /// A `shardlm-server` command.
    pub fn server(&self) -> Command {
        Command::new(&self.server)
    }

    /// Runs `keygen --out DIR` of `bin` and returns the printed fingerprint.
    pub fn keygen(mut bin: Command, dir: &Path) -> String {
        let out = bin.arg("keygen").arg("--out").arg(dir).output().expect("keygen runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts `shardlm-server serve` on 127.0.0.1 (a free port) with `extra` flags and
    /// waits for its listening line.
    pub fn start_server(
        &self,
        model: &Path,
        identity: &Path,
        allow: &str,
        extra: &[&std::ffi::OsStr],
    ) -> Server {
        let mut child = self
            .server()
            .args(["serve", "--bind", "127.0.0.1", "--port", "0", "--idle-timeout", "5", "--model-dir"])
            .arg(model)
            .arg("--identity")
            .arg(identity)
            .args(["--allow-client", allow])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("shardlm-server starts");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let addr = line.split_whitespace().nth(2).unwrap_or_default().to_string();
        assert!(addr.starts_with("127.0.0.1:"), "server said: {line}");
        Server { child, addr }
    }
}

/// A running server process, killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
