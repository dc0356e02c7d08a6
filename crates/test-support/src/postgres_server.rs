//! A throw-away PostgreSQL server for tests: `initdb` on a temporary directory, the
//! server on a free loopback port (its Unix socket in the same directory), stopped
//! and deleted on drop.
//!
//! The binaries are found with `pg_config --bindir` (or `HALO_PG_BINDIR`). Without
//! them, [`PgServer::start`] panics with the command that installs them: a cluster
//! test fails rather than skips (`.ci/run` installs Debian's `postgresql-15` when it
//! is missing).
//!
//! `initdb` and `postgres` refuse to run as root. Under root (containers, CI), the
//! fixture gives the directory to the `postgres` system user (created by Debian's
//! package) and runs both through `runuser -u postgres --`.
//!
//! [`PgServer::start_listening_on`] also listens on one more address (the root
//! side of the test's network namespaces) and trusts connections from one subnet.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running test server; see the module docs.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
    /// `listen_addresses`.
    listen: String,
    child: Option<Child>,
    paused: Vec<u32>,
}

const INSTALL_HINT: &str = "PostgreSQL's server binaries were not found (`pg_config --bindir`, or set HALO_PG_BINDIR). The cluster tests need them: install Debian's package with `apt-get install postgresql-15` (.ci/run does this when they are missing)";

fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HALO_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let found = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let dir = found
        .or_else(|| {
            // Debian's `postgresql-15` puts the server outside PATH and may lack the
            // `pg_config` of the -dev package.
            let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
            debian.is_dir().then_some(debian)
        })
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"));
    assert!(dir.join("initdb").is_file(), "{INSTALL_HINT}");
    dir
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl PgServer {
    /// Runs `initdb` in a fresh temporary directory and starts the server.
    ///
    /// # Panics
    /// When the binaries are missing (see the module docs) or the server does not
    /// start: a test fixture fails loudly.
    pub fn start() -> PgServer {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), but also listening on `addr` and trusting
    /// connections from `clients` (a CIDR such as `10.0.0.0/24`), as it trusts
    /// loopback: for nodes in network namespaces. `addr` must already be up.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_listening_on(addr: std::net::IpAddr, clients: &str) -> PgServer {
        Self::start_with(Some((addr, clients)))
    }

    fn start_with(extra: Option<(std::net::IpAddr, &str)>) -> PgServer {
        let bindir = bindir();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "halo-pg-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let run_as = is_root().then_some("postgres");
        if let Some(user) = run_as {
            let status = Command::new("chown")
                .args([&format!("{user}:"), dir.to_str().expect("UTF-8 temp dir")])
                .status()
                .expect("run chown");
            assert!(status.success(), "cannot give {} to {user}", dir.display());
        }
        let mut server = PgServer {
            dir,
            bindir,
            port: free_port(),
            run_as,
            listen: extra.map_or_else(|| "127.0.0.1".to_owned(), |(a, _)| format!("127.0.0.1,{a}")),
            child: None,
            paused: Vec::new(),
        };
        let data = server.data();
        let out = server
            .command("initdb")
            .args(["-D", &data, "-U", "halo", "--auth=trust", "-E", "UTF8"])
            .arg("--no-sync")
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((_, clients)) = extra {
            let hba = Path::new(&data).join("pg_hba.conf");
            let mut text = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            text.push_str(&format!("host all all {clients} trust\n"));
            std::fs::write(&hba, text).expect("write pg_hba.conf");
        }
        server.launch();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).expect("server log");
        let child = self
            .command("postgres")
            .args(["-D", &self.data(), "-p", &self.port.to_string()])
            .args(["-k", &self.dir.display().to_string()])
            .args(["-c", &format!("listen_addresses={}", self.listen)])
            .args(["-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start within 30 s; its log:\n{}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The connection string of the server's `postgres` database, user `halo`.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=halo dbname=postgres",
            self.port
        )
    }

    /// The server's TCP port (on every address it listens on).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id (from `postmaster.pid`).
    fn postmaster(&self) -> Option<u32> {
        let text = std::fs::read_to_string(Path::new(&self.data()).join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The postmaster and every process it started (backends, background workers).
    fn server_processes(&self) -> Vec<u32> {
        let Some(root) = self.postmaster() else {
            return Vec::new();
        };
        let mut pids = vec![root];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                // Field 4, after the parenthesised command name.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(root) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    fn signal(pids: &[u32], signal: &str) {
        for pid in pids {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Freezes the server (SIGSTOP to the postmaster and all its processes): open
    /// connections hang rather than fail, as with a lost network.
    pub fn pause(&mut self) {
        self.paused = self.server_processes();
        assert!(!self.paused.is_empty(), "no postgres process to pause");
        Self::signal(&self.paused, "-STOP");
    }

    /// Thaws what [`pause`](Self::pause) froze.
    pub fn resume(&mut self) {
        let mut pids = std::mem::take(&mut self.paused);
        // `runuser` stops itself when its child stops (as `su` does) and would
        // otherwise never reap the server.
        pids.extend(self.child.as_ref().map(Child::id));
        Self::signal(&pids, "-CONT");
    }

    /// Stops the server (immediate shutdown: connections are cut).
    pub fn stop(&mut self) {
        self.resume();
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D", &self.data()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
