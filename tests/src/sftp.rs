//! A real OpenSSH `sshd` on a loopback port, configured with the project's
//! `sftp/sshd_aljex.conf` (chroot, `internal-sftp`, password login), and the
//! real `sftp` client driven by `sshpass`. Needs root (chroot, user creation).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{free_port, repo_root};

/// The system user Aljex logs in as in the tests.
pub const SFTP_USER: &str = "aljex-sftp";
/// Its password in the tests.
pub const SFTP_PASSWORD: &str = "sftp-test-password-1";

/// A running sshd, killed on drop, with its chroot under /srv.
pub struct SftpServer {
    child: Child,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// The chroot (root-owned).
    pub chroot: PathBuf,
    /// The inbox inside it, writable by [`SFTP_USER`].
    pub inbox: PathBuf,
    log: PathBuf,
}

/// A system tool, by its /usr/sbin path when PATH may not include it.
fn sbin(tool: &str) -> Command {
    let path = Path::new("/usr/sbin").join(tool);
    Command::new(if path.exists() {
        path
    } else {
        PathBuf::from(tool)
    })
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Creates the SFTP user and group once (idempotent) and sets the password.
fn ensure_user() -> anyhow::Result<()> {
    let exists = |db: &str, name: &str| {
        Command::new("getent")
            .args([db, name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !exists("group", "aljex-sync") {
        run(sbin("groupadd").arg("aljex-sync"))?;
    }
    if !exists("passwd", SFTP_USER) {
        run(sbin("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "-g",
            "aljex-sync",
            SFTP_USER,
        ]))?;
    }
    let mut chpasswd = sbin("chpasswd").stdin(Stdio::piped()).spawn()?;
    use std::io::Write;
    writeln!(
        chpasswd.stdin.take().context("stdin")?,
        "{SFTP_USER}:{SFTP_PASSWORD}"
    )?;
    if !chpasswd.wait()?.success() {
        bail!("chpasswd failed");
    }
    Ok(())
}

impl SftpServer {
    /// Starts sshd with the project's SFTP settings on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let uid = String::from_utf8(Command::new("id").arg("-u").output()?.stdout)?;
        if uid.trim() != "0" {
            bail!("the SFTP tests need root (sshd chroot and a system user); CI runs as root");
        }
        // One sshd (and one chpasswd) at a time: concurrent ones were seen to
        // drop connections on this machine.
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ensure_user()?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let chroot = PathBuf::from(format!("/srv/aljex-sftp-test-{}", &id[..12]));
        run(Command::new("install")
            .args(["-d", "-o", "root", "-g", "root", "-m", "0755"])
            .arg(&chroot))?;
        let inbox = chroot.join("inbox");
        run(Command::new("install")
            .args(["-d", "-o", SFTP_USER, "-g", "aljex-sync", "-m", "2770"])
            .arg(&inbox))?;
        let work = std::env::temp_dir().join(format!("aljex-sshd-{id}"));
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all("/run/sshd")?;
        let host_key = work.join("host_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key))?;
        let port = free_port();
        let project = std::fs::read_to_string(repo_root().join("sftp/sshd_aljex.conf"))?.replace(
            "ChrootDirectory /srv/aljex-sftp",
            &format!("ChrootDirectory {}", chroot.display()),
        );
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication no\n\
             PermitRootLogin no\nAllowUsers {SFTP_USER}\nStrictModes yes\nLogLevel VERBOSE\n{project}",
            host_key.display(),
            work.join("sshd.pid").display()
        );
        let config_path = work.join("sshd_config");
        std::fs::write(&config_path, config)?;
        let sshd = Path::new("/usr/sbin/sshd");
        let check = Command::new(sshd)
            .arg("-t")
            .arg("-f")
            .arg(&config_path)
            .output()?;
        if !check.status.success() {
            bail!("sshd -t: {}", String::from_utf8_lossy(&check.stderr));
        }
        let log = work.join("sshd.log");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start sshd")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "sshd did not listen: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(SftpServer {
            child,
            _one_at_a_time: guard,
            port,
            chroot,
            inbox,
            log,
        })
    }

    /// Runs `sftp -b` with these batch commands as Aljex would (password login).
    pub fn batch(&self, commands: &str) -> anyhow::Result<String> {
        let dir = std::env::temp_dir().join(format!(
            "aljex-sftp-batch-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let batch = dir.join("batch");
        std::fs::write(&batch, commands)?;
        let output = Command::new("sshpass")
            .args(["-p", SFTP_PASSWORD, "sftp", "-P", &self.port.to_string()])
            // Before -b, which would turn password prompts off (BatchMode=yes).
            .args(["-o", "BatchMode=no"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
            ])
            .arg("-b")
            .arg(&batch)
            .arg(format!("{SFTP_USER}@127.0.0.1"))
            .output()
            .context("run sshpass sftp")?;
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            bail!(
                "sftp failed: {text}\nsshd log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(text)
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.chroot);
    }
}
