//! One run of the very dnstrace binary under test, as a user runs it:
//! `dnstrace --backend B --format json -o FILE`, stopped with SIGINT. Its
//! standard error is echoed to the console, so the log shows what it said.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const DNSTRACE: &str = "/bin/dnstrace";
/// Loading is verification, and verification under TCG is slow.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
/// From SIGINT to exit: detach, drain, write the summary.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Tracer {
    child: Child,
    lines: Receiver<String>,
    /// Everything dnstrace wrote on standard error so far.
    pub stderr: Vec<String>,
    pub output: PathBuf,
}

/// How a start ended.
pub enum Start {
    /// `dnstrace: attached, backend NAME`.
    Attached(String),
    /// dnstrace exited first: it could not start.
    Exited(ExitStatus),
}

impl Tracer {
    pub fn start(backend: &str) -> anyhow::Result<Self> {
        let output = PathBuf::from(format!("/tmp/{backend}.jsonl"));
        let mut child = Command::new(DNSTRACE)
            .args(["--backend", backend, "--format", "json", "-o"])
            .arg(&output)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {DNSTRACE}"))?;
        let stderr = child.stderr.take().context("dnstrace's stderr")?;
        let (send, lines) = mpsc::channel();
        let tag = backend.to_owned();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                println!("[{tag}] {line}");
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            stderr: Vec::new(),
            output,
        })
    }

    /// Waits for the `attached` line, or for dnstrace to give up.
    pub fn attach(&mut self) -> anyhow::Result<Start> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let attached = line
                        .strip_prefix("dnstrace: attached, backend ")
                        .map(str::to_owned);
                    self.stderr.push(line);
                    if let Some(backend) = attached {
                        return Ok(Start::Attached(backend));
                    }
                }
                // Standard error closed: dnstrace has exited.
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(Start::Exited(self.wait(STOP_TIMEOUT)?));
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    bail!("dnstrace did not attach within {ATTACH_TIMEOUT:?}");
                }
            }
        }
    }

    /// SIGINT, as a user's Ctrl-C, then waits for the exit and its last words.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        // SAFETY: kill takes no pointers; the child is ours and not reaped.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) } != 0 {
            bail!("SIGINT to dnstrace: {}", std::io::Error::last_os_error());
        }
        let status = self.wait(STOP_TIMEOUT)?;
        // The echo thread ends at end of file, which the exit brings.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        Ok(status)
    }

    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for dnstrace")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("dnstrace did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        // It may have exited already; either way it is gone after this.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
