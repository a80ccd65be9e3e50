//! Child processes with a deadline: a hung download or VM must fail the
//! task, not hang CI.

use std::{
    io::Read as _,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Waits for `child`, killing it once `timeout` has passed.
pub fn wait(child: &mut Child, what: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // Already gone or not: either way it is no longer running.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not finish within {} s; killed",
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `command` to completion within `timeout`; failure names it.
pub fn run(command: &mut Command, timeout: Duration) -> anyhow::Result<()> {
    let what = format!("{command:?}");
    let mut child = command
        .spawn()
        .with_context(|| format!("failed to start {what}"))?;
    let status = wait(&mut child, &what, timeout)?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

/// Like [`run`], and returns what the command printed on standard output.
pub fn output(command: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let what = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {what}"))?;
    let mut stdout = child.stdout.take().context("piped stdout")?;
    // Read while waiting: a full pipe would stall the child.
    let reader = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let status = wait(&mut child, &what, timeout)?;
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reading {what}'s output panicked"))?
        .with_context(|| format!("reading {what}'s output"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(text)
}
