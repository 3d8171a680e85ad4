//! A Postgres server of a test's own, for faults the shared test cluster
//! must not suffer (stopping it). Binaries come from `AAA_PG_BIN` (set by
//! `scripts/test.sh`; default Debian's Postgres 15). As root, the server runs
//! as `postgres`, as `scripts/lib.sh` does.

use std::path::PathBuf;
use std::process::Command;

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

fn as_postgres(program: PathBuf) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PgServer {
    /// A fresh cluster on a free port, started.
    pub fn start() -> PgServer {
        let bin = PathBuf::from(
            std::env::var("AAA_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        let dir = tempfile::Builder::new()
            .prefix("aaa-pg-")
            .tempdir()
            .expect("a directory for the cluster");
        if nix::unistd::Uid::effective().is_root() {
            let owner = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("a postgres user (scripts/test.sh creates it)");
            std::os::unix::fs::chown(dir.path(), Some(owner.uid.as_raw()), None)
                .expect("hand the cluster directory to postgres");
        }
        let mut initdb = as_postgres(bin.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb");
        let server = PgServer {
            dir,
            bin,
            port: crate::free_port(),
        };
        server.start_again();
        server
    }

    /// The superuser's URL of the `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut command = as_postgres(self.bin.join("pg_ctl"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args);
        command
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let mut start = self.pg_ctl(&["-w", "-t", "60", "start", "-o", &options]);
        start.arg("-l").arg(log);
        run(start, "pg_ctl start");
    }

    /// Stops the server the way a crash does (`immediate`: no checkpoint,
    /// every connection cut).
    pub fn crash(&self) {
        run(
            self.pg_ctl(&["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]).output();
    }
}
