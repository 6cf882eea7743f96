//! Real Redis servers for the fleet suite, started by the tests themselves on free
//! loopback ports in temporary directories: one standalone server (optionally with
//! TLS, optionally persistent, so a kill and restart keeps its data), and a 3-master
//! Redis Cluster built with `redis-cli --cluster create`. Each is killed when dropped.
//!
//! `redis-server` and `redis-cli` come from PATH (or `REDIS_SERVER` / `REDIS_CLI`);
//! `.ci/run` installs Debian's `redis-server` package when they are missing. A missing
//! binary fails the test with that instruction: nothing is skipped.
#![allow(dead_code)]

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn binary(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: run `apt-get install -y redis-server` (what .ci/run does) or set {env}"
        )
    })
}

/// A port free now for the server and, for cluster nodes, its bus port (+10000).
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if with_bus && (port > 55535 || TcpListener::bind(("127.0.0.1", port + 10000)).is_err()) {
            continue;
        }
        return port;
    }
    panic!("no free port pair found");
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

/// TLS material for a server: its certificate and key, and the CA that signed them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a server certificate for 127.0.0.1 / localhost in `dir`.
pub fn make_tls(dir: &Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("redis.crt"),
        key: dir.join("redis.key"),
    };
    std::fs::write(&files.ca, issuer.pem()).expect("write ca");
    std::fs::write(&files.cert, cert.pem()).expect("write cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    files
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Append-only file with fsync on every write: a killed server restarts with its data.
    pub persistent: bool,
    /// Serve TLS only (on the port), with these files.
    pub tls: Option<TlsFiles>,
    /// `requirepass`.
    pub password: Option<String>,
    /// A cluster node.
    pub cluster: bool,
}

/// One running `redis-server`.
pub struct RedisServer {
    pub port: u16,
    options: Options,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain standalone server.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// A server with `options`.
    pub fn start_with(options: Options) -> Self {
        let mut dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..5 {
            let port = free_port(options.cluster);
            let mut s = Self {
                port,
                options: options.clone(),
                dir,
                child: None,
            };
            if s.launch() {
                return s;
            }
            dir = s.take_dir();
        }
        panic!("redis-server did not start");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    fn args(&self) -> Vec<String> {
        let d = self.dir.path().display().to_string();
        let mut a: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            d,
            "--save".into(),
            String::new(),
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
            "--loglevel".into(),
            "warning".into(),
            "--logfile".into(),
            "redis.log".into(),
        ];
        match &self.options.tls {
            Some(t) => a.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                self.port.to_string(),
                "--tls-cert-file".into(),
                t.cert.display().to_string(),
                "--tls-key-file".into(),
                t.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                t.ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
            None => a.extend(["--port".into(), self.port.to_string()]),
        }
        if self.options.persistent {
            a.extend([
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "always".into(),
            ]);
        }
        if let Some(p) = &self.options.password {
            a.extend(["--requirepass".into(), p.clone()]);
        }
        if self.options.cluster {
            a.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                "2000".into(),
            ]);
        }
        a
    }

    /// Starts the process and waits until it answers (false if it exited).
    fn launch(&mut self) -> bool {
        let child = Command::new(binary("REDIS_SERVER", "redis-server"))
            .args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return false;
            }
            let up = match self.options.tls {
                // A TLS port accepts TCP; the handshake is the client's business.
                Some(_) => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
                None => answers_ping(self.port),
            };
            if up {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://localhost:PORT` with TLS).
    pub fn url(&self) -> String {
        match self.options.tls {
            Some(_) => format!("rediss://localhost:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL: no shutdown save, connections reset).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (with its data when persistent).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.launch(), "redis-server restarts on port {}", self.port);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Runs `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(binary("REDIS_CLI", "redis-cli"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.options.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters (no replicas), every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes and joins them.
    pub fn start() -> Self {
        let options = Options {
            cluster: true,
            ..Options::default()
        };
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with(options.clone()))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(binary("REDIS_CLI", "redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if nodes
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            {
                return Self { nodes };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster never reached cluster_state:ok");
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
