//! Child processes that are always reaped: bounded waits, readiness by
//! watching stderr, and a kill on drop so a failing test leaves nothing behind.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStderr, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::clients::NOBODY;

/// How long a process may take to get ready or to exit. Generous, because
/// the machine is shared and noisy; nothing waits this long when all is well.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A long-running process (server, capture, tracer) whose stderr is kept.
pub struct Daemon {
    name: String,
    child: Child,
    stderr: StderrLines,
}

impl Daemon {
    /// Spawns `command` with stdin and stdout closed and stderr watched.
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        Self::spawn_with_stdout(name, command, Stdio::null())
    }

    /// As [`Daemon::spawn`], with standard output going to `stdout`.
    pub fn spawn_with_stdout(name: &str, command: &mut Command, stdout: Stdio) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({command:?}): {e}"));
        let stderr = StderrLines::watch(child.stderr.take().expect("stderr is piped"));
        Self {
            name: name.to_owned(),
            child,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics, with everything it printed, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "{} exited early with {status}; stderr:\n{}",
                self.name,
                self.stderr.text()
            );
        }
    }

    /// Waits until a stderr line starts with `prefix`; panics on exit or timeout.
    pub fn wait_for_stderr(&mut self, prefix: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .stderr
            .wait_for_prefix(prefix, Duration::from_millis(100))
        {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} printed no line starting with {prefix:?} within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr.text()
            );
        }
    }

    /// Sends `signal`, then waits as [`Daemon::wait`] does.
    pub fn stop(self, signal: libc::c_int) -> (ExitStatus, Vec<String>) {
        send_signal(&self.child, signal);
        self.wait()
    }

    /// Waits for the exit and returns the status with the complete stderr.
    /// Kills the process and panics if it does not exit within [`PATIENCE`].
    pub fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let Some(status) = wait_bounded(&mut self.child, PATIENCE) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "{} did not exit within {PATIENCE:?}; stderr:\n{}",
                self.name,
                self.stderr.text()
            );
        };
        (status, self.stderr.finish())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Polls for the child's exit until `timeout`; `None` if it is still running.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A command run as nobody, with no capabilities to inherit: `program`
/// comes next, then its arguments.
pub fn as_nobody() -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
    ]);
    command
}

/// Runs a short command to completion and returns its stdout; panics with
/// its stderr if it fails.
pub fn run(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

/// Retries `attempt` until it returns `true`, for at most `timeout`.
pub fn poll_until(what: &str, timeout: Duration, mut attempt: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !attempt() {
        assert!(
            Instant::now() < deadline,
            "{what}: not done within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of a child's stderr, collected by a thread as they arrive.
struct StderrLines {
    shared: Arc<(Mutex<Vec<String>>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

impl StderrLines {
    fn watch(stderr: ChildStderr) -> Self {
        let shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let writer = Arc::clone(&shared);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lines, changed) = &*writer;
                lines.lock().expect("stderr lock").push(line);
                changed.notify_all();
            }
        });
        Self {
            shared,
            reader: Some(reader),
        }
    }

    fn wait_for_prefix(&self, prefix: &str, timeout: Duration) -> bool {
        let (lines, changed) = &*self.shared;
        let lines = lines.lock().expect("stderr lock");
        let (lines, _) = changed
            .wait_timeout_while(lines, timeout, |lines| {
                !lines.iter().any(|l| l.starts_with(prefix))
            })
            .expect("stderr lock");
        lines.iter().any(|l| l.starts_with(prefix))
    }

    fn text(&self) -> String {
        self.shared.0.lock().expect("stderr lock").join("\n")
    }

    /// Every line, once the process has exited and closed stderr.
    fn finish(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stderr reader thread");
        }
        self.shared.0.lock().expect("stderr lock").clone()
    }
}
