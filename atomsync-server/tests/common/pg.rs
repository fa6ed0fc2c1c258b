//! A real PostgreSQL for the tests: the server named by
//! `ATOMSYNC_TEST_POSTGRES_URL` (a role that may create databases), or a
//! throwaway cluster made with Debian's `initdb`/`pg_ctl` in a temporary
//! directory, run as the `postgres` system user when the tests run as root,
//! on a free loopback port. The cluster is stopped (immediately) and deleted
//! by a watchdog once the test process is gone. Nothing is skipped: if
//! PostgreSQL cannot be started, the tests fail and say why.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A PostgreSQL cluster the tests started.
pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = found.pop() {
        return dir;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout).trim().into();
    }
    panic!(
        "PostgreSQL is needed by these tests and was not found: install Debian's `postgresql` \
         package (./scripts/setup.sh does), set PG_BINDIR, or point \
         ATOMSYNC_TEST_POSTGRES_URL at a server"
    );
}

impl Cluster {
    /// Makes and starts a new cluster.
    pub fn start() -> Cluster {
        let bin = bin_dir();
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "atomsync-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Cluster {
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown of {} failed",
                cluster.dir.display()
            );
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        cluster.watchdog();
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("PostgreSQL's {program} could not run: {e}"));
        assert!(
            out.status.success(),
            "PostgreSQL's {program} failed (the tests need a PostgreSQL they can start):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the cluster and deletes it once this process is gone. (It
    /// outlives this process on purpose: never waited for.)
    #[allow(clippy::zombie_processes)]
    fn watchdog(&self) {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; {pg_ctl} -D {data} stop -m immediate \
             >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data(),
            dir = self.dir.display(),
        );
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", "sh", "-c", &script]);
            command
        } else {
            let mut command = Command::new("sh");
            command.args(["-c", &script]);
            command
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the PostgreSQL watchdog could not start");
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once (`-m immediate`, like a crash).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }

    /// Starts the server again (same port, same data).
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// The URL of database `name`, as the `postgres` superuser.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server shared by the tests of this process: its URL with the
/// database part left off (`postgres://user@host:port`), and its maintenance
/// database.
fn server() -> &'static (String, String) {
    static SERVER: OnceLock<(String, String)> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("ATOMSYNC_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let (base, database) = split_url(&url);
            (base, database)
        }
        _ => {
            let cluster = Box::leak(Box::new(Cluster::start()));
            let (base, _) = split_url(&cluster.url("postgres"));
            (base, "postgres".to_owned())
        }
    })
}

/// `postgres://u@h:p/db?x` → (`postgres://u@h:p`, `db`), keeping no query.
fn split_url(url: &str) -> (String, String) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let url = url.split('?').next().unwrap_or(url);
    match url[scheme_end..].find('/') {
        Some(slash) => {
            let at = scheme_end + slash;
            (url[..at].to_owned(), url[at + 1..].to_owned())
        }
        None => (url.to_owned(), "postgres".to_owned()),
    }
}

/// Creates an empty database on `admin_url`'s server and returns the URL
/// of the new database (`base/name`).
pub fn create_database(base: &str, admin_db: &str) -> String {
    let name = format!(
        "atomsync_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = format!("{base}/{admin_db}");
    // The blocking client may not run on an async runtime's thread.
    sql(&admin, &format!("CREATE DATABASE {name}"));
    format!("{base}/{name}")
}

/// A new, empty database on the tests' PostgreSQL.
pub fn fresh_database() -> String {
    let (base, admin) = server();
    create_database(base, admin)
}

/// Runs `statements` on the database at `url` (from a thread of its own, so
/// that async tests may call it).
pub fn sql(url: &str, statements: &str) {
    let (url, statements) = (url.to_owned(), statements.to_owned());
    std::thread::spawn(move || {
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {url}: {e}"));
        client
            .batch_execute(&statements)
            .unwrap_or_else(|e| panic!("{statements}: {e}"));
    })
    .join()
    .unwrap();
}
